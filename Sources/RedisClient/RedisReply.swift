/// A reply from Redis (RESP2).
public enum RedisReply: Sendable, Hashable {
    /// A simple string ("+OK").
    case status(String)
    /// An error reply ("-ERR ..."), kept whole: kind and message.
    case error(String)
    /// An integer (":42").
    case integer(Int)
    /// A bulk string ("$3\r\nfoo"), binary safe.
    case bulk([UInt8])
    /// An array ("*2 ..."), possibly nested, possibly with `.null` elements.
    case array([RedisReply])
    /// A nil bulk string or nil array ("$-1", "*-1").
    case null

    /// `.status`, or `.bulk` decoded as UTF-8; nil for other replies and for invalid UTF-8.
    public var string: String? {
        switch self {
        case .status(let text):
            return text
        case .bulk(let bytes):
            return String(validating: bytes, as: UTF8.self)
        default:
            return nil
        }
    }

    /// `.integer`, or a `.bulk`/`.status` holding a decimal integer ("42", "-7").
    public var int: Int? {
        switch self {
        case .integer(let value):
            return value
        case .bulk, .status:
            return string.flatMap { Int($0) }
        default:
            return nil
        }
    }

    /// The bytes of a `.bulk` or `.status` reply.
    public var bytes: [UInt8]? {
        switch self {
        case .bulk(let bytes):
            return bytes
        case .status(let text):
            return Array(text.utf8)
        default:
            return nil
        }
    }

    /// The elements of an `.array` reply.
    public var array: [RedisReply]? {
        if case .array(let elements) = self {
            return elements
        }
        return nil
    }

    /// True for `.null`.
    public var isNull: Bool {
        if case .null = self {
            return true
        }
        return false
    }

    /// A flat `[name, value, name, value, ...]` array (HGETALL, stream entry fields, XINFO) as name/value pairs,
    /// names decoded as UTF-8 and values as raw bytes; nil when this is not an array.
    public var fieldPairs: [(name: String, value: [UInt8])]? {
        guard let flat = array else { return nil }
        var pairs: [(name: String, value: [UInt8])] = []
        pairs.reserveCapacity(flat.count / 2)
        var index = 0
        while index + 1 < flat.count {
            pairs.append((flat[index].string ?? "", flat[index + 1].bytes ?? []))
            index += 2
        }
        return pairs
    }
}
