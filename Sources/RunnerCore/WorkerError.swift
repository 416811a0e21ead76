/// Why a worker could not start or keep going.
public struct WorkerError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        case nameInUse
        case redisUnavailable
        case invalidConfiguration
        case processSupervision
        case leaseLost
    }
    public var code: Code
    public var message: String
    public init(_ code: Code, _ message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { message }
}
