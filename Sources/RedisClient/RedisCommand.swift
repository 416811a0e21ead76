/// One command as binary-safe arguments (first one is the command name).
public struct RedisCommand: Sendable, Hashable {
    /// The arguments sent as RESP bulk strings; the first is the command name.
    public var arguments: [[UInt8]]

    /// A command from UTF-8 text arguments: `RedisCommand(["SET", key, value])`.
    public init(_ arguments: [String]) {
        self.arguments = arguments.map { Array($0.utf8) }
    }

    /// A command from its name and text arguments: `RedisCommand("GET", key)`.
    public init(_ name: String, _ arguments: String...) {
        self.init([name] + arguments)
    }

    /// A command from raw arguments (binary safe).
    public init(bytes: [[UInt8]]) {
        self.arguments = bytes
    }

    /// Appends a UTF-8 text argument.
    public mutating func append(_ argument: String) {
        arguments.append(Array(argument.utf8))
    }

    /// Appends a raw argument (binary safe).
    public mutating func append(bytes: [UInt8]) {
        arguments.append(bytes)
    }

    /// The uppercased first argument, for logs and errors ("XREADGROUP"); "" for an empty command.
    public var name: String {
        guard let first = arguments.first else {
            return ""
        }
        return String(decoding: first, as: UTF8.self).uppercased()
    }
}

extension RedisCommand {
    /// How long Redis itself may hold the reply back: the `BLOCK` of XREAD/XREADGROUP (milliseconds) or the timeout
    /// of BLPOP, BRPOP, BRPOPLPUSH, BLMOVE, BZPOPMIN, BZPOPMAX (last argument), BLMPOP, BZMPOP (first argument),
    /// in seconds. `.some(nil)` means forever (0); nil means the command does not block.
    var serverBlockTime: Duration?? {
        func number(_ bytes: [UInt8]) -> Double? {
            Double(String(decoding: bytes, as: UTF8.self))
        }
        func blockTime(seconds: Double) -> Duration?? {
            guard seconds.isFinite, seconds >= 0 else {
                return nil
            }
            return seconds == 0 ? .some(nil) : .some(.milliseconds(Int64((seconds * 1000).rounded(.up))))
        }
        switch name {
        case "XREAD", "XREADGROUP":
            // Options come before STREAMS; what follows are key names and IDs, which may well read "BLOCK".
            var index = 1
            while index + 1 < arguments.count {
                let option = String(decoding: arguments[index], as: UTF8.self).uppercased()
                if option == "STREAMS" {
                    return nil
                }
                if option == "BLOCK" {
                    return number(arguments[index + 1]).flatMap { blockTime(seconds: $0 / 1000) }
                }
                index += 1
            }
            return nil
        case "BLPOP", "BRPOP", "BRPOPLPUSH", "BLMOVE", "BZPOPMIN", "BZPOPMAX":
            guard arguments.count >= 2, let seconds = number(arguments[arguments.count - 1]) else {
                return nil
            }
            return blockTime(seconds: seconds)
        case "BLMPOP", "BZMPOP":
            guard arguments.count >= 2, let seconds = number(arguments[1]) else {
                return nil
            }
            return blockTime(seconds: seconds)
        default:
            return nil
        }
    }
}
