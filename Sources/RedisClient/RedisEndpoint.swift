/// Where Redis is: "host:port", "host" (port 6379), "[::1]:6380", or "redis://[user:password@]host[:port][/db]"
/// (user optional: "redis://:secret@host"). Percent-decoding of user/password.
public struct RedisEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// Host name or IP address (IPv6 without brackets).
    public var host: String
    /// TCP port.
    public var port: Int
    /// ACL user name for `AUTH user password`; nil for `AUTH password` or no AUTH.
    public var username: String?
    /// Password for AUTH; nil for no AUTH.
    public var password: String?
    /// Database number for SELECT (0 needs none).
    public var database: Int

    /// An endpoint from its parts (not validated).
    public init(host: String, port: Int = 6379, username: String? = nil, password: String? = nil, database: Int = 0) {
        self.host = host
        self.port = port
        self.username = username
        self.password = password
        self.database = database
    }

    /// Parses "host", "host:port", "[v6]:port", a bare IPv6 address, or
    /// "redis://[[user]:password@]host[:port][/db]". Surrounding whitespace is ignored.
    /// Throws `.invalidEndpoint` naming the text (password hidden) and what is wrong.
    public init(parsing text: String) throws(RedisClientError) {
        let text = Self.trimmingWhitespace(text)
        func failure(_ reason: String) -> RedisClientError {
            RedisClientError(
                code: .invalidEndpoint,
                message: "invalid Redis endpoint \"\(Self.hidingPassword(in: text))\": \(reason)"
            )
        }
        guard !text.isEmpty else {
            throw failure("it is empty")
        }
        var hostAndPort = Substring(text)
        var username: String?
        var password: String?
        var database = 0
        if let schemeEnd = text.firstRange(of: "://") {
            let scheme = text[..<schemeEnd.lowerBound].lowercased()
            guard scheme == "redis" else {
                throw failure(
                    scheme == "rediss"
                        ? "TLS (rediss://) is not supported"
                        : "unsupported scheme \"\(scheme)://\" (use redis://host:port or host:port)"
                )
            }
            var rest = text[schemeEnd.upperBound...]
            if rest.contains("?") || rest.contains("#") {
                throw failure("query and fragment are not supported")
            }
            if let slash = rest.firstIndex(of: "/") {
                let path = rest[rest.index(after: slash)...]
                rest = rest[..<slash]
                if !path.isEmpty {
                    guard path.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int(path) else {
                        throw failure("the database must be a non-negative integer, not \"\(path)\"")
                    }
                    database = number
                }
            }
            if let at = rest.lastIndex(of: "@") {
                let userInfo = rest[..<at]
                rest = rest[rest.index(after: at)...]
                guard let colon = userInfo.firstIndex(of: ":") else {
                    throw failure("a user name needs a password (redis://user:password@host or redis://:password@host)")
                }
                guard let user = Self.percentDecoded(userInfo[..<colon]),
                    let secret = Self.percentDecoded(userInfo[userInfo.index(after: colon)...])
                else {
                    throw failure("bad percent-encoding in the user or password")
                }
                guard !secret.isEmpty else {
                    throw failure("the password is empty")
                }
                username = user.isEmpty ? nil : user
                password = secret
            }
            hostAndPort = rest
        } else if text.contains("/") || text.contains("@") {
            throw failure("expected host:port, or a redis:// URL for a password or database")
        }

        var host: Substring
        var portText: Substring?
        if hostAndPort.hasPrefix("[") {
            guard let close = hostAndPort.firstIndex(of: "]") else {
                throw failure("missing \"]\" after the IPv6 address")
            }
            host = hostAndPort[hostAndPort.index(after: hostAndPort.startIndex)..<close]
            let after = hostAndPort[hostAndPort.index(after: close)...]
            if !after.isEmpty {
                guard after.hasPrefix(":") else {
                    throw failure("expected \":port\" after \"]\"")
                }
                portText = after.dropFirst()
            }
        } else if hostAndPort.filter({ $0 == ":" }).count > 1 {
            host = hostAndPort  // a bare IPv6 address; a port needs brackets
        } else if let colon = hostAndPort.firstIndex(of: ":") {
            host = hostAndPort[..<colon]
            portText = hostAndPort[hostAndPort.index(after: colon)...]
        } else {
            host = hostAndPort
        }
        guard !host.isEmpty else {
            throw failure("the host is missing")
        }
        guard !host.contains(where: { $0.isWhitespace }) else {
            throw failure("the host contains white space")
        }
        var port = 6379
        if let portText {
            guard portText.allSatisfy({ $0.isASCII && $0.isNumber }), let number = Int(portText),
                (1...65535).contains(number)
            else {
                throw failure("the port must be a number from 1 to 65535, not \"\(portText)\"")
            }
            port = number
        }
        self.init(host: String(host), port: port, username: username, password: password, database: database)
    }

    /// Never shows the password: "127.0.0.1:6379" or "redis://user:***@host:6379/2".
    public var description: String {
        let hostPort = (host.contains(":") ? "[\(host)]" : host) + ":\(port)"
        if username == nil && password == nil && database == 0 {
            return hostPort
        }
        var text = "redis://"
        if username != nil || password != nil {
            text += Self.percentEncoded(username ?? "")
            if password != nil {
                text += ":***"
            }
            text += "@"
        }
        text += hostPort
        if database != 0 {
            text += "/\(database)"
        }
        return text
    }
}

extension RedisEndpoint {
    private static func trimmingWhitespace(_ text: String) -> String {
        String(text.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
    }

    /// The text for an error message, with whatever follows the user name in a URL's user info replaced by "***".
    private static func hidingPassword(in text: String) -> String {
        guard let schemeEnd = text.firstRange(of: "://") else {
            return text
        }
        let rest = text[schemeEnd.upperBound...]
        let authority = rest[..<(rest.firstIndex(of: "/") ?? rest.endIndex)]
        guard let at = authority.lastIndex(of: "@") else {
            return text
        }
        let userInfo = authority[..<at]
        guard let colon = userInfo.firstIndex(of: ":") else {
            return text
        }
        return String(text[..<colon]) + ":***" + String(text[at...])
    }

    private static func percentDecoded(_ text: Substring) -> String? {
        var bytes: [UInt8] = []
        var utf8 = text.utf8.makeIterator()
        while let byte = utf8.next() {
            guard byte == UInt8(ascii: "%") else {
                bytes.append(byte)
                continue
            }
            guard let high = utf8.next().flatMap(hexValue), let low = utf8.next().flatMap(hexValue) else {
                return nil
            }
            bytes.append(high << 4 | low)
        }
        return String(validating: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"):
            return byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"):
            return byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"):
            return byte - UInt8(ascii: "A") + 10
        default:
            return nil
        }
    }

    private static func percentEncoded(_ text: String) -> String {
        let hex = Array("0123456789ABCDEF".utf8)
        var bytes: [UInt8] = []
        for byte in text.utf8 {
            let plain =
                (byte >= UInt8(ascii: "a") && byte <= UInt8(ascii: "z"))
                || (byte >= UInt8(ascii: "A") && byte <= UInt8(ascii: "Z"))
                || (byte >= UInt8(ascii: "0") && byte <= UInt8(ascii: "9"))
                || Array("-._~".utf8).contains(byte)
            if plain {
                bytes.append(byte)
            } else {
                bytes += [UInt8(ascii: "%"), hex[Int(byte >> 4)], hex[Int(byte & 0xF)]]
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
