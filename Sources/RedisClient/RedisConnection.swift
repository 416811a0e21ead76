import CHiredis

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// A blocking connection owned by one thread. Connects, then AUTH (password, or ACL user+password) and SELECT.
///
/// Not thread safe and not `Sendable`: a hiredis context must be used by one thread at a time, and its calls block
/// (never use one on Swift's cooperative pool; `RedisClient` gives it a thread of its own).
public final class RedisConnection {
    /// Where this connection goes.
    public let endpoint: RedisEndpoint
    private let context: UnsafeMutablePointer<redisContext>
    private let defaultReadTimeout: Duration?
    /// The timeout currently set on the socket (`.some(nil)`: none; nil: not set by us yet), so redisSetTimeout runs
    /// only on a change.
    private var socketTimeout: Duration??
    /// Set after a connection-level error; a broken connection refuses further commands.
    public private(set) var isBroken = false
    private var brokenReason = ""

    /// redisConnectWithTimeout, then redisSetTimeout(`readTimeout`; nil = none), then `AUTH` and `SELECT` as the
    /// endpoint asks. Throws `.connectionFailed` (also for a failure during the handshake), `.authenticationFailed`,
    /// or `.invalidEndpoint` when SELECT is refused.
    public init(endpoint: RedisEndpoint, connectTimeout: Duration, readTimeout: Duration?) throws(RedisClientError) {
        self.endpoint = endpoint
        self.defaultReadTimeout = readTimeout
        let port = Int32(clamping: endpoint.port)
        guard let context = redisConnectWithTimeout(endpoint.host, port, connectTimeout.asTimeval) else {
            throw RedisClientError(code: .connectionFailed, message: "cannot reach Redis at \(endpoint): out of memory")
        }
        self.context = context
        if context.pointee.err != 0 {
            let reason = String(cString: nr_redis_errstr(context))
            throw RedisClientError(code: .connectionFailed, message: "cannot reach Redis at \(endpoint): \(reason)")
        }
        // Not fatal: without it a spawned child would merely hold a copy of the socket.
        _ = nr_set_cloexec(context.pointee.fd)
        do {
            try applyTimeout(readTimeout)
            try handshake()
        } catch {
            if error.code == .authenticationFailed || error.code == .invalidEndpoint {
                throw error
            }
            throw RedisClientError(
                code: .connectionFailed, message: "cannot reach Redis at \(endpoint): \(error.reason)"
            )
        }
    }

    deinit {
        redisFree(context)
    }

    /// The socket, for shutdown(2) by the owner of an interrupt.
    var fileDescriptor: Int32 {
        context.pointee.fd
    }

    /// Whether the server has closed this idle connection (recv(2) with MSG_PEEK | MSG_DONTWAIT sees end of file or
    /// an error), so a command would certainly fail; checked before reusing a connection.
    var peerHasClosed: Bool {
        isBroken || nr_socket_peer_closed(context.pointee.fd) != 0
    }

    /// One command: encoded into the output buffer, a MSG_NOSIGNAL write, redisGetReply. Error replies come back as
    /// `.error`, not thrown. `readTimeout` overrides the default for this call; without it, a blocking command
    /// (`XREADGROUP ... BLOCK ms`, `BLPOP ... timeout`) waits at least its own block time plus a second.
    public func send(_ command: RedisCommand, readTimeout: Duration? = nil) throws(RedisClientError) -> RedisReply {
        try pipeline([command], readTimeout: readTimeout, describedAs: command.name)[0]
    }

    /// The commands encoded into the output buffer, one write, then redisGetReply ×N: one round trip. Error replies
    /// are returned in place.
    public func pipeline(_ commands: [RedisCommand]) throws(RedisClientError) -> [RedisReply] {
        try pipeline(commands, readTimeout: nil, describedAs: "a pipeline of \(commands.count) commands")
    }

    func pipeline(
        _ commands: [RedisCommand], readTimeout: Duration?, describedAs what: String
    ) throws(RedisClientError) -> [RedisReply] {
        guard !isBroken else {
            throw RedisClientError(
                code: .closed,
                message: "connection to Redis at \(endpoint) is unusable after an earlier error: \(brokenReason)"
            )
        }
        guard !commands.isEmpty else {
            return []
        }
        if commands.contains(where: { $0.arguments.isEmpty }) {
            throw RedisClientError(
                code: .protocolError, message: "cannot send an empty command to Redis at \(endpoint)"
            )
        }
        let timeout = readTimeout ?? effectiveDefaultTimeout(for: commands)
        try applyTimeout(timeout)
        for command in commands {
            try append(command)
        }
        var savedErrno: Int32 = 0
        if nr_redis_flush(context, &savedErrno) != REDIS_OK {
            throw fail(what: what, errno: savedErrno, timeout: timeout)
        }
        var replies: [RedisReply] = []
        replies.reserveCapacity(commands.count)
        for _ in commands {
            var reply: UnsafeMutablePointer<redisReply>?
            guard nr_redis_get_reply(context, &reply, &savedErrno) == REDIS_OK, let reply else {
                throw fail(what: what, errno: savedErrno, timeout: timeout)
            }
            defer { freeReplyObject(reply) }
            guard let converted = Self.convert(reply) else {
                markBroken("unknown reply type \(reply.pointee.type)")
                throw RedisClientError(
                    code: .protocolError,
                    message: "unexpected reply type \(reply.pointee.type) from Redis at \(endpoint) to \(what)"
                )
            }
            replies.append(converted)
        }
        if readTimeout != nil {
            try applyTimeout(defaultReadTimeout)
        }
        return replies
    }

    /// Breaks the connection for good (used after a timeout: a late reply would answer the wrong command).
    func markBroken(_ reason: String) {
        isBroken = true
        brokenReason = reason
    }

    private func effectiveDefaultTimeout(for commands: [RedisCommand]) -> Duration? {
        guard var timeout = defaultReadTimeout else {
            return nil
        }
        // A default read timeout must never cut a BLOCK short.
        for command in commands {
            switch command.serverBlockTime {
            case .none:
                continue
            case .some(.none):
                return nil
            case .some(.some(let block)):
                timeout = max(timeout, block + .seconds(1))
            }
        }
        return timeout
    }

    /// redisSetTimeout (SO_RCVTIMEO and SO_SNDTIMEO); nil means none.
    private func applyTimeout(_ timeout: Duration?) throws(RedisClientError) {
        if let current = socketTimeout, current == timeout {
            return
        }
        let value = timeout?.asTimeval ?? timeval(tv_sec: 0, tv_usec: 0)
        guard redisSetTimeout(context, value) == REDIS_OK else {
            let reason = String(cString: nr_redis_errstr(context))
            markBroken(reason)
            throw RedisClientError(
                code: .connectionLost, message: "cannot set a timeout for Redis at \(endpoint): \(reason)"
            )
        }
        socketTimeout = .some(timeout)
    }

    /// Puts the command, encoded here (`RedisCommand.encoded`), into the output buffer (no I/O).
    private func append(_ command: RedisCommand) throws(RedisClientError) {
        let status = command.encoded.withUnsafeBufferPointer { bytes in
            bytes.withMemoryRebound(to: CChar.self) { redisAppendFormattedCommand(context, $0.baseAddress, $0.count) }
        }
        guard status == REDIS_OK else {
            let reason = String(cString: nr_redis_errstr(context))
            markBroken(reason)
            throw RedisClientError(
                code: .protocolError,
                message: "cannot encode \(command.name) for Redis at \(endpoint): \(reason)"
            )
        }
    }

    private func fail(what: String, errno savedErrno: Int32, timeout: Duration?) -> RedisClientError {
        let kind = context.pointee.err
        let reason = String(cString: nr_redis_errstr(context))
        markBroken(reason)
        if kind == REDIS_ERR_IO && (savedErrno == EAGAIN || savedErrno == EWOULDBLOCK) {
            let limit = timeout.map { " within \($0.shortDescription)" } ?? ""
            return RedisClientError(code: .timeout, message: "Redis at \(endpoint) did not answer \(what)\(limit)")
        }
        if kind == REDIS_ERR_PROTOCOL || kind == REDIS_ERR_OOM || kind == REDIS_ERR_OTHER {
            return RedisClientError(
                code: .protocolError,
                message: "bad reply from Redis at \(endpoint) to \(what): \(reason)"
            )
        }
        return RedisClientError(code: .connectionLost, message: "lost connection to Redis at \(endpoint): \(reason)")
    }

    private func handshake() throws(RedisClientError) {
        var auth: RedisCommand?
        if let password = endpoint.password {
            if let username = endpoint.username {
                auth = RedisCommand("AUTH", username, password)
            } else {
                auth = RedisCommand("AUTH", password)
            }
        }
        if let auth {
            let reply = try send(auth)
            if case .error(let message) = reply {
                markBroken("authentication failed")
                throw RedisClientError(
                    code: .authenticationFailed,
                    message: "authentication to Redis at \(endpoint) failed: \(message)"
                )
            }
        }
        if endpoint.database != 0 {
            let reply = try send(RedisCommand("SELECT", String(endpoint.database)))
            if case .error(let message) = reply {
                markBroken("SELECT failed")
                throw RedisClientError(
                    code: .invalidEndpoint,
                    message: "Redis at \(endpoint) refused SELECT \(endpoint.database): \(message)"
                )
            }
        }
    }

    /// Converts a hiredis reply tree (REDIS_REPLY_*: STRING 1, ARRAY 2, INTEGER 3, NIL 4, STATUS 5, ERROR 6);
    /// nil for an unknown type anywhere in it.
    static func convert(_ reply: UnsafePointer<redisReply>) -> RedisReply? {
        let node = reply.pointee
        switch node.type {
        case REDIS_REPLY_STRING:
            return .bulk(bytes(node))
        case REDIS_REPLY_STATUS:
            return .status(String(decoding: bytes(node), as: UTF8.self))
        case REDIS_REPLY_ERROR:
            return .error(String(decoding: bytes(node), as: UTF8.self))
        case REDIS_REPLY_INTEGER:
            return .integer(Int(node.integer))
        case REDIS_REPLY_NIL:
            return .null
        case REDIS_REPLY_ARRAY:
            var elements: [RedisReply] = []
            elements.reserveCapacity(node.elements)
            for index in 0..<node.elements {
                guard let element = node.element?[index] else {
                    elements.append(.null)
                    continue
                }
                guard let converted = convert(element) else {
                    return nil
                }
                elements.append(converted)
            }
            return .array(elements)
        default:
            return nil
        }
    }

    private static func bytes(_ node: redisReply) -> [UInt8] {
        guard let str = node.str, node.len > 0 else {
            return []
        }
        return Array(UnsafeRawBufferPointer(start: str, count: node.len))
    }
}

extension RedisClientError {
    /// The message's reason after "Redis at host:port...: ", for wrapping into another message.
    var reason: String {
        guard let separator = message.firstRange(of: ": ") else {
            return message
        }
        return String(message[separator.upperBound...])
    }
}
