import Foundation
import RunnerCore
import RunnerProtocol

/// The worker's labels and job hooks: options and their validation.
extension WorkerCommand {
    static let labelAndHookOptions: [OptionSpec] = [
        OptionSpec(
            "--label", .repeated("K=V"),
            help: "A label of this runner (also a comma list: gpu=a100,zone=eu); jobs that require labels run only on "
                + "runners that have them all.",
            environment: "RUNNER_LABELS"),
        OptionSpec(
            "--hook-pre-job", .value("PATH"),
            help: "Executable run before each job in its work folder with its environment; failing, it fails the job.",
            environment: "RUNNER_HOOK_PRE_JOB"),
        OptionSpec(
            "--hook-post-job", .value("PATH"),
            help: "Executable run after each job, also given NR_JOB_STATE and NR_EXIT_CODE.",
            environment: "RUNNER_HOOK_POST_JOB"),
        OptionSpec(
            "--hook-timeout", .value("DURATION"), help: "How long a hook may run before it is stopped.",
            environment: "RUNNER_HOOK_TIMEOUT", default: "60s"),
    ]

    /// The hint of an empty label in a list (`--label`, `RUNNER_LABELS`, `submit --require`).
    static let labelListExample = "K=V labels separated by commas, e.g. gpu=a100,zone=eu"

    /// `--label K=V`... (each also a comma list, `gpu=a100,zone=eu`), validated as the protocol's label rules say.
    static func labels(_ arguments: ParsedArguments) throws -> LabelSet {
        let pairs = try arguments.commaList("--label", item: "label", example: labelListExample) ?? []
        do {
            return try LabelSet(pairs: pairs)
        } catch {
            throw UsageError("invalid value for '--label': \(error.message)", command: spec.name)
        }
    }

    /// The hooks, each checked now (an absolute or relative path to an executable file) so that a typo fails at
    /// start, not at the first job.
    static func hooks(_ arguments: ParsedArguments) throws -> JobHooksConfiguration {
        func executable(_ option: String) throws -> String? {
            guard let path = arguments.value(option) else { return nil }
            var isDirectory: ObjCBool = false
            guard FileManager.default.fileExists(atPath: path, isDirectory: &isDirectory) else {
                throw UsageError(
                    "invalid value for '\(option)': '\(UsageError.excerpt(path, limit: .max))' does not exist",
                    command: spec.name)
            }
            guard !isDirectory.boolValue, access(path, X_OK) == 0 else {
                throw UsageError(
                    "invalid value for '\(option)': '\(UsageError.excerpt(path, limit: .max))' is not an executable "
                        + "file",
                    command: spec.name)
            }
            // Hooks run in the job's work folder: a relative path would name another file there.
            return path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        }
        let timeout = try arguments.duration("--hook-timeout", atLeast: .milliseconds(10)) ?? .seconds(60)
        return JobHooksConfiguration(
            preJob: try executable("--hook-pre-job"), postJob: try executable("--hook-post-job"), timeout: timeout)
    }
}
