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
        let runAs = try arguments.value("--run-as").map(runAsUser)
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
            // Hooks run as the jobs' user: root may execute what that user cannot, and every job would then fail.
            if let user = runAs, !isExecutable(path, by: user) {
                throw UsageError(
                    "invalid value for '\(option)': '\(UsageError.excerpt(path, limit: .max))' is not executable by "
                        + "the --run-as user \(UsageError.excerpt(user.name)) (it and every folder above it need "
                        + "that user's x bit, a script its r bit too)", command: spec.name)
            }
            // Hooks run in the job's work folder: a relative path would name another file there.
            return path.hasPrefix("/") ? path : FileManager.default.currentDirectoryPath + "/" + path
        }
        let timeout = try arguments.duration("--hook-timeout", atLeast: .milliseconds(10)) ?? .seconds(60)
        return JobHooksConfiguration(
            preJob: try executable("--hook-pre-job"), postJob: try executable("--hook-post-job"), timeout: timeout)
    }

    /// Whether `user` (its uid and primary gid: jobs run with no supplementary groups) may execute `path` by its
    /// mode bits: search on every folder of its real path, execute on the file, and read as well for a script (its
    /// interpreter reads it). Root (uid 0) may search any folder and run a file with any x bit. ACLs are not read.
    static func isExecutable(_ path: String, by user: RunAsUser) -> Bool {
        guard let real = realpath(path, nil) else { return false }
        defer { free(real) }
        let file = String(cString: real)
        func allows(_ path: String, _ bit: mode_t, directory: Bool) -> Bool {
            var status = stat()
            guard stat(path, &status) == 0 else { return false }
            if user.uid == 0 { return directory || status.st_mode & 0o111 != 0 }
            let shift: mode_t = status.st_uid == user.uid ? 6 : status.st_gid == user.gid ? 3 : 0
            return (status.st_mode >> shift) & bit != 0
        }
        var folder = ""
        for component in file.split(separator: "/").dropLast() {
            folder += "/" + component
            guard allows(folder, 1, directory: true) else { return false }
        }
        guard allows("/", 1, directory: true), allows(file, 1, directory: false) else { return false }
        let isScript = FileHandle(forReadingAtPath: file).map { handle in
            defer { try? handle.close() }
            return (try? handle.read(upToCount: 2)) == Data("#!".utf8)
        } ?? false
        return !isScript || allows(file, 4, directory: false)
    }
}
