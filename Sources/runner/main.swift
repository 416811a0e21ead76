import Foundation
import RunnerCLI

exit(await RunnerCommandLine.run(arguments: Array(CommandLine.arguments.dropFirst())))
