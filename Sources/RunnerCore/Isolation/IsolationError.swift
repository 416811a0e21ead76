/// Why a job's isolation could not be set up, or was refused. The message says what is missing or wrong.
public struct IsolationError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable {
        /// The host cannot give what the job asks for.
        case unsupported
        /// The job asks for more than the runner's ceilings.
        case aboveCeiling
        /// The work folder could not be made.
        case workspace
        /// The cgroup could not be made or limited.
        case cgroup
    }

    public var code: Code
    public var message: String

    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }

    public var description: String { message }
}
