import Synchronization

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// Why the server could not start, with the address and the system's reason.
public struct HTTPServerError: Error, Sendable, CustomStringConvertible {
    public enum Code: Sendable, Equatable {
        /// Not `HOST:PORT`, or a port out of range.
        case invalidAddress
        /// The host name does not resolve.
        case unresolvable
        /// socket/bind/listen failed (port in use, address not on this host, no permission).
        case bindFailed
    }

    public var code: Code
    public var message: String
    public var errno: Int32?

    public init(_ code: Code, _ message: String, errno: Int32? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }

    public var description: String { message }
}

/// Where to listen: a host (name, IPv4, or IPv6 in brackets) and a port (0: any free one).
public struct HTTPListenAddress: Sendable, Equatable, CustomStringConvertible {
    public var host: String
    public var port: Int

    public init(host: String, port: Int) {
        self.host = host
        self.port = port
    }

    /// Parses `HOST:PORT`, `[IPv6]:PORT` or `:PORT` (every interface).
    public init(parsing text: String) throws(HTTPServerError) {
        func invalid(_ why: String) -> HTTPServerError {
            // Control characters escaped, so that the error stays one line that cannot drive a terminal.
            let quoted = text.unicodeScalars.map {
                $0.properties.generalCategory == .control ? $0.escaped(asASCII: true) : String($0)
            }.joined()
            return HTTPServerError(.invalidAddress, "invalid listen address '\(quoted)': \(why)")
        }
        guard let colon = text.lastIndex(of: ":") else { throw invalid("expected HOST:PORT") }
        var host = String(text[..<colon])
        let portText = text[text.index(after: colon)...]
        if host.hasPrefix("[") {
            guard host.hasSuffix("]"), host.count > 2 else { throw invalid("an IPv6 host is written [ADDRESS]") }
            host = String(host.dropFirst().dropLast())
        } else if host.contains(":") {
            throw invalid("write an IPv6 host in brackets, [ADDRESS]:PORT")
        }
        guard !portText.isEmpty, portText.allSatisfy(\.isASCII), let port = Int(portText), (0...65535).contains(port)
        else { throw invalid("the port must be a number from 0 to 65535") }
        guard host.allSatisfy({ $0.isASCII && !$0.isWhitespace }) else {
            throw invalid("the host is not a name or address")
        }
        self.host = host.isEmpty ? "0.0.0.0" : host
        self.port = port
    }

    public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
}

/// A tiny HTTP/1.1 server for health and metrics endpoints: GET and HEAD only, one request per connection
/// (`Connection: close`), bounded request heads, a read timeout, no bodies read.
///
/// One dedicated thread accepts and serves every connection from one poll loop (heads are tiny and responses small
/// and ready in memory), so blocking accept and read never touch Swift's cooperative pool. At most
/// `maximumConnections` are open at once: at the limit a new connection evicts the one that has waited longest for
/// its head, so slow or idle clients (each held at most `readTimeout`) never lock a probe out. After a response the
/// server stops sending and briefly drains the client's input before closing, so even a refused request (431, 400)
/// is read by the client instead of lost to a reset. The handler runs on that thread and must not block.
public final class HTTPServer: Sendable {
    public typealias Handler = @Sendable (HTTPRequestHead) -> HTTPResponse

    /// The address actually bound (with the port chosen when 0 was asked for).
    public let boundAddress: HTTPListenAddress
    private let listener: Int32
    /// A pipe: `stop()` writes to its end to wake the thread polling the other.
    private let wakeup: (read: Int32, write: Int32)
    private let parser: HTTPRequestParser
    private let readTimeout: Duration
    private let stopped = Mutex(false)
    private let exited = Mutex(false)
    private let maximumConnections: Int

    /// Binds and listens now (so a bad address or a port in use fails at start); serving begins with `start`.
    public init(
        listen address: HTTPListenAddress, parser: HTTPRequestParser = HTTPRequestParser(),
        readTimeout: Duration = .seconds(2), maximumConnections: Int = 64
    ) throws(HTTPServerError) {
        let socket = try Self.listen(on: address)
        var bound = address
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        let named = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(socket, $0, &length) }
        }
        if named == 0, let port = Self.port(of: storage) { bound.port = port }
        var ends: [Int32] = [-1, -1]
        guard pipe(&ends) == 0 else {
            let code = Glibc.errno
            close(socket)
            throw HTTPServerError(
                .bindFailed, "cannot serve on \(address): pipe: \(String(cString: strerror(code)))", errno: code)
        }
        for fd in ends { Self.setCloseOnExec(fd, nonBlocking: true) }
        self.listener = socket
        self.wakeup = (ends[0], ends[1])
        self.boundAddress = bound
        self.parser = parser
        self.readTimeout = readTimeout
        self.maximumConnections = max(1, maximumConnections)
    }

    deinit {
        close(listener)
        close(wakeup.read)
        close(wakeup.write)
    }

    /// Starts the serving thread. The server (and the handler) live until `stop()`.
    public func start(handler: @escaping Handler) {
        if !Self.detachThread({ self.serve(handler) }) { exited.withLock { $0 = true } }
    }

    /// Runs `body` on a new detached thread (pthread_create); false when none could be made.
    private static func detachThread(_ body: @escaping @Sendable () -> Void) -> Bool {
        let box = Unmanaged.passRetained(ThreadBody(body))
        var thread = pthread_t()
        let status = pthread_create(
            &thread, nil,
            { raw in
                guard let raw else { return nil }
                Unmanaged<ThreadBody>.fromOpaque(raw).takeRetainedValue().body()
                return nil
            }, box.toOpaque())
        guard status == 0 else {
            box.release()
            return false
        }
        pthread_detach(thread)
        return true
    }

    /// Stops serving: the serving thread ends at once and closes the connections still open. Idempotent.
    public func stop() {
        stopped.withLock { $0 = true }
        var one: UInt64 = 1
        _ = write(wakeup.write, &one, 8)
    }

    /// Whether the serving thread has ended (after `stop()`).
    public var hasExited: Bool { exited.withLock { $0 } }

    private final class ThreadBody: Sendable {
        let body: @Sendable () -> Void
        init(_ body: @escaping @Sendable () -> Void) { self.body = body }
    }

    private func serve(_ handler: @escaping Handler) {
        defer { exited.withLock { $0 = true } }
        var connections: [HTTPConnection] = []
        defer { for connection in connections { close(connection.fd) } }
        var buffer = [UInt8](repeating: 0, count: 4096)
        // Out of descriptors: accept again after a pause instead of spinning on a listener that stays readable.
        var acceptPausedUntil: ContinuousClock.Instant?
        while !stopped.withLock({ $0 }) {
            let now = ContinuousClock.now
            for index in connections.indices.reversed() where connections[index].deadline <= now {
                let step = connections[index].expire {
                    HTTPResponse.text(408, "the request head did not arrive within \(readTimeout)").serialized()
                }
                if step == .finished { close(connections.remove(at: index).fd) }
            }
            if let paused = acceptPausedUntil, paused <= now { acceptPausedUntil = nil }
            var fds = [
                pollfd(fd: wakeup.read, events: Int16(POLLIN), revents: 0),
                pollfd(fd: acceptPausedUntil == nil ? listener : -1, events: Int16(POLLIN), revents: 0),
            ]
            fds += connections.map { pollfd(fd: $0.fd, events: $0.events, revents: 0) }
            let wake = connections.map(\.deadline).min().map { min($0, acceptPausedUntil ?? $0) } ?? acceptPausedUntil
            let ready = poll(&fds, nfds_t(fds.count), wake.map { Self.milliseconds(until: $0) } ?? -1)
            if ready < 0 {
                if Glibc.errno == EINTR { continue }
                return
            }
            if fds[0].revents != 0 { return }
            // Connections first (back to front, so removing one keeps the other indices), then new ones.
            for index in connections.indices.reversed() where fds[index + 2].revents != 0 {
                if connections[index].advance(buffer: &buffer, answer: { answer($0, handler) }) == .finished {
                    close(connections.remove(at: index).fd)
                }
            }
            guard fds[1].revents & Int16(POLLIN) != 0 else { continue }
            for _ in 0..<maximumConnections {
                let fd = accept(listener, nil, nil)
                guard fd >= 0 else {
                    if Glibc.errno == EMFILE || Glibc.errno == ENFILE { acceptPausedUntil = .now + .milliseconds(100) }
                    break  // none left waiting, the client went away first, or out of descriptors for now
                }
                Self.setCloseOnExec(fd, nonBlocking: true)
                if connections.count >= maximumConnections, let victim = Self.evictionVictim(connections) {
                    close(connections.remove(at: victim).fd)
                }
                var connection = HTTPConnection(fd: fd, accepted: .now, readTimeout: readTimeout)
                // The head usually came with the connection: answer it now.
                if connection.advance(buffer: &buffer, answer: { answer($0, handler) }) == .finished {
                    close(fd)
                } else {
                    connections.append(connection)
                }
            }
        }
    }

    /// Which connection makes room for a new one at the limit: one only draining (its response is sent), else the
    /// one that has waited longest for its head (a slow or idle client must not lock probes out), else the oldest.
    static func evictionVictim(_ connections: [HTTPConnection]) -> Int? {
        func oldest(_ phase: HTTPConnection.Phase?) -> Int? {
            connections.indices.filter { phase == nil || connections[$0].phase == phase }
                .min { connections[$0].accepted < connections[$1].accepted }
        }
        return oldest(.draining) ?? oldest(.reading) ?? oldest(nil)
    }

    /// The response to the bytes read so far, nil while the head is incomplete.
    private func answer(_ received: [UInt8], _ handler: Handler) -> [UInt8]? {
        switch parser.parse(received) {
        case .complete(let head): Self.route(head, handler).serialized(headOnly: head.method == "HEAD")
        case .invalid(let error): HTTPResponse.text(error.status, error.message).serialized()
        case .incomplete: nil
        }
    }

    /// A poll(2) timeout reaching `deadline`: at least 1 ms, so a deadline just passing is not spun on.
    private static func milliseconds(until deadline: ContinuousClock.Instant) -> Int32 {
        let left = deadline - .now
        guard left > .zero else { return 0 }
        let ms = left.components.seconds * 1000 + left.components.attoseconds / 1_000_000_000_000_000 + 1
        return Int32(min(ms, 60_000))
    }

    /// GET and HEAD go to the handler; other methods are refused with 405.
    static func route(_ head: HTTPRequestHead, _ handler: Handler) -> HTTPResponse {
        guard head.method == "GET" || head.method == "HEAD" else {
            var response = HTTPResponse.text(405, "method \(head.method) is not allowed; use GET")
            response.headers["Allow"] = "GET, HEAD"
            return response
        }
        return handler(head)
    }

    /// getaddrinfo, then socket + SO_REUSEADDR + bind + listen on the first address that works.
    private static func listen(on address: HTTPListenAddress) throws(HTTPServerError) -> Int32 {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV
        var list: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(address.host, String(address.port), &hints, &list)
        guard status == 0, let first = list else {
            throw HTTPServerError(
                .unresolvable, "cannot listen on \(address): \(String(cString: gai_strerror(status)))")
        }
        defer { freeaddrinfo(list) }
        var lastError: Int32 = 0
        var step = "bind"
        var cursor: UnsafeMutablePointer<addrinfo>? = first
        while let info = cursor {
            cursor = info.pointee.ai_next
            let fd = socket(info.pointee.ai_family, info.pointee.ai_socktype, info.pointee.ai_protocol)
            guard fd >= 0 else {
                (lastError, step) = (Glibc.errno, "socket")
                continue
            }
            // Jobs are spawned by this process: none may inherit the listening socket.
            setCloseOnExec(fd, nonBlocking: true)
            var on: Int32 = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
            if bind(fd, info.pointee.ai_addr, info.pointee.ai_addrlen) != 0 {
                (lastError, step) = (Glibc.errno, "bind")
                close(fd)
                continue
            }
            // A burst of probes and scrapes waits in the kernel's queue instead of being reset.
            if Glibc.listen(fd, SOMAXCONN) != 0 {
                (lastError, step) = (Glibc.errno, "listen")
                close(fd)
                continue
            }
            return fd
        }
        let reason = lastError == EADDRINUSE ? "the port is already in use" : String(cString: strerror(lastError))
        throw HTTPServerError(.bindFailed, "cannot listen on \(address): \(step): \(reason)", errno: lastError)
    }

    /// fcntl FD_CLOEXEC, and O_NONBLOCK when asked (accept and read then never block; poll waits).
    private static func setCloseOnExec(_ fd: Int32, nonBlocking: Bool) {
        _ = fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC)
        if nonBlocking { _ = fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) }
    }

    private static func port(of storage: sockaddr_storage) -> Int? {
        var copy = storage
        switch Int32(storage.ss_family) {
        case AF_INET:
            return withUnsafePointer(to: &copy) {
                $0.withMemoryRebound(to: sockaddr_in.self, capacity: 1) { Int(UInt16(bigEndian: $0.pointee.sin_port)) }
            }
        case AF_INET6:
            return withUnsafePointer(to: &copy) {
                $0.withMemoryRebound(to: sockaddr_in6.self, capacity: 1) {
                    Int(UInt16(bigEndian: $0.pointee.sin6_port))
                }
            }
        default: return nil
        }
    }
}
