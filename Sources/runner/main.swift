import Foundation
import RunnerCLI

// A closed stderr (`runner worker 2>&1 | head`) must not kill a runner with running jobs: writes fail instead.
signal(SIGPIPE, SIG_IGN)
Console.reserveMissingStandardDescriptors()

switch RunnerCommandLine.processArguments() {
case .success(let arguments):
    exit(await RunnerCommandLine.run(arguments: arguments))
case .failure(let error):
    FileHandle.standardError.write(Data("Error: \(error.message)\nSee 'runner --help'.\n".utf8))
    exit(2)
}
