import Foundation
import RunnerCLI

switch RunnerCommandLine.processArguments() {
case .success(let arguments):
    exit(await RunnerCommandLine.run(arguments: arguments))
case .failure(let error):
    FileHandle.standardError.write(Data("Error: \(error.message)\nSee 'runner --help'.\n".utf8))
    exit(2)
}
