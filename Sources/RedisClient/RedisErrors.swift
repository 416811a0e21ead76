/// A failure of the client side: could not connect, timed out, connection lost, bad reply, closed.
public struct RedisClientError: Error, Sendable, CustomStringConvertible, Equatable {
    /// What went wrong.
    public enum Code: Sendable, Equatable {
        /// The endpoint text could not be parsed, or the server rejected its database number (SELECT).
        case invalidEndpoint
        /// Connecting failed (refused, unresolvable, connect timeout, lost during the handshake).
        case connectionFailed
        /// AUTH was rejected.
        case authenticationFailed
        /// No reply within the read timeout; the connection is dropped (the reply might still come).
        case timeout
        /// The connection broke while a command was being sent or its reply read.
        case connectionLost
        /// The reply could not be parsed, or the command could not be encoded.
        case protocolError
        /// The client or connection was closed.
        case closed
    }

    /// What went wrong.
    public var code: Code
    /// What and where, e.g. "cannot reach Redis at 127.0.0.1:6390: Connection refused".
    public var message: String

    /// An error with a code and a message naming the endpoint and the reason.
    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }

    /// The message.
    public var description: String {
        message
    }

    /// True when the command certainly never reached the server (safe to retry any command).
    public var commandWasNotSent: Bool {
        switch code {
        case .invalidEndpoint, .connectionFailed, .authenticationFailed, .closed:
            return true
        case .timeout, .connectionLost, .protocolError:
            return false
        }
    }
}

/// Redis answered with an error reply ("-ERR ...", "-NOGROUP ...", "-NOSCRIPT ...").
public struct RedisServerError: Error, Sendable, CustomStringConvertible, Equatable {
    /// The whole error text without the leading "-": "NOGROUP No such key 'jobs' or consumer group ...".
    public var message: String

    /// An error from the text of an error reply (`RedisReply.error`).
    public init(_ message: String) {
        self.message = message
    }

    /// The first word: "ERR", "NOGROUP", "BUSYGROUP", "NOSCRIPT", "WRONGPASS", ...
    public var kind: String {
        String(message.prefix { $0 != " " })
    }

    /// "Redis replied with an error: <message>".
    public var description: String {
        "Redis replied with an error: \(message)"
    }
}
