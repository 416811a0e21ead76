#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// One accepted connection as the serving loop sees it: reading its request head, writing its response, or
/// draining what the client still sends after the response (closing a socket with unread input makes the kernel
/// send a reset, and a client that has not read the response yet then loses it).
struct HTTPConnection {
    enum Phase: Equatable {
        case reading
        case writing
        case draining
    }

    /// What a step leaves of the connection.
    enum Step: Equatable {
        case open
        /// Done with, or the client went away: close it.
        case finished
    }

    let fd: Int32
    let accepted: ContinuousClock.Instant
    private(set) var phase = Phase.reading
    /// When the current phase gives up: the read timeout for the head, then the bounded write and drain times.
    private(set) var deadline: ContinuousClock.Instant
    /// The head read so far (bounded by the parser's limit plus one read).
    private var received: [UInt8] = []
    private var response: [UInt8] = []
    private var written = 0
    private var discarded = 0

    /// Time to write a response once answered; responses are small and ready in memory.
    static let writeTimeout = Duration.seconds(2)
    /// Time given to a client to read the response and hang up before the server closes anyway.
    static let drainTimeout = Duration.milliseconds(500)
    /// Input discarded after the response before closing anyway (a client that keeps sending is not waited on).
    static let drainLimit = 64 * 1024

    init(fd: Int32, accepted: ContinuousClock.Instant, readTimeout: Duration) {
        self.fd = fd
        self.accepted = accepted
        self.deadline = accepted + readTimeout
    }

    /// The poll events this connection waits for now.
    var events: Int16 { phase == .writing ? Int16(POLLOUT) : Int16(POLLIN) }

    /// Does what the connection is ready for (poll said so, or it was just accepted). `answer` turns the bytes read
    /// so far into a response once they are a whole head (or are no head at all), nil while more are needed.
    mutating func advance(buffer: inout [UInt8], answer: ([UInt8]) -> [UInt8]?) -> Step {
        switch phase {
        case .reading:
            while true {
                let count = read(fd, &buffer, buffer.count)
                if count < 0 {
                    if errno == EINTR { continue }
                    if errno == EAGAIN || errno == EWOULDBLOCK { return .open }
                    return .finished
                }
                // The client closed before a whole head: nobody to answer.
                if count == 0 { return .finished }
                received += buffer[..<count]
                if let bytes = answer(received) { return respond(bytes) }
            }
        case .writing:
            return writeResponse()
        case .draining:
            while true {
                let count = read(fd, &buffer, buffer.count)
                if count < 0, errno == EINTR { continue }
                if count < 0, errno == EAGAIN || errno == EWOULDBLOCK { return .open }
                // The client hung up (it has read the response), or it failed.
                guard count > 0 else { return .finished }
                discarded += count
                if discarded > Self.drainLimit { return .finished }
            }
        }
    }

    /// The deadline passed: a head that did not arrive is answered 408 (from `timedOut`); a write or drain that did
    /// not end is given up.
    mutating func expire(timedOut: () -> [UInt8]) -> Step {
        phase == .reading ? respond(timedOut()) : .finished
    }

    /// Starts writing `bytes`, and writes what the socket takes now.
    mutating func respond(_ bytes: [UInt8]) -> Step {
        phase = .writing
        received = []
        response = bytes
        written = 0
        deadline = .now + Self.writeTimeout
        return writeResponse()
    }

    private mutating func writeResponse() -> Step {
        while written < response.count {
            let count = response[written...].withUnsafeBytes {
                send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
            if count < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { return .open }
                return .finished
            }
            written += count
        }
        // All written: send FIN after it, then read what the client still sends until it hangs up.
        shutdown(fd, Int32(SHUT_WR))
        phase = .draining
        response = []
        deadline = .now + Self.drainTimeout
        return .open
    }
}
