import CHiredis

#if canImport(Glibc)
    import Glibc
#elseif canImport(Musl)
    import Musl
#endif

/// The state shared by `RedisClient`'s callers and its owner thread, and the thread's work.
///
/// Callers only touch `state` (under its lock) and resume continuations; the hiredis connection lives on the owner
/// thread alone (in `OwnerThreadConnection`). interrupt(), cancellation and close() reach a blocked read through
/// shutdown(2) of the socket registered in `state`; the owner unregisters it under the same lock before redisFree
/// closes it, so the descriptor can never be a reused number belonging to someone else.
final class ClientCore: Sendable {
    enum Work: Sendable {
        case connect
        case commands([RedisCommand], readTimeout: Duration?)
    }

    struct Request: Sendable {
        let id: UInt64
        let work: Work
        let retry: RedisRetry
        let destination: ReplyDestination
    }

    /// Where a request's replies go.
    enum ReplyDestination: Sendable {
        /// A caller suspended in `submit`.
        case caller(CheckedContinuation<[RedisReply], any Error>)
        /// A caller that collects them later (`PendingReplies`).
        case pending(PendingReplies)

        func resume(with result: Result<[RedisReply], any Error>) {
            switch self {
            case .caller(let continuation): continuation.resume(with: result)
            case .pending(let pending): pending.deliver(result)
            }
        }

        func resume(throwing error: any Error) { resume(with: .failure(error)) }
    }

    /// The request the owner thread is serving.
    struct Current {
        let id: UInt64
        var cancelled = false
        var interrupted = false
    }

    struct State {
        var queue: [Request] = []
        var current: Current?
        var closed = false
        var startFailure: String?
        /// The live connection's socket, while the owner thread holds one.
        var socket: Int32?
        /// We shut the socket down ourselves (interrupt, cancellation, close): its end of file is no lost server.
        var socketShutDown = false
        var nextID: UInt64 = 0
        var connectionAttempts = 0
        var ownerThreadHasExited = false
        var stats = RedisClientStats()
    }

    let endpoint: RedisEndpoint
    let options: RedisClientOptions
    let log: @Sendable (String) -> Void
    let state = ConditionLock(State())

    init(endpoint: RedisEndpoint, options: RedisClientOptions, log: @escaping @Sendable (String) -> Void) {
        self.endpoint = endpoint
        self.options = options
        self.log = log
    }

    var connectionAttempts: Int {
        state.withLock { $0.connectionAttempts }
    }

    var stats: RedisClientStats {
        state.withLock { $0.stats }
    }

    /// Counts a failed connection attempt or a lost connection; the client is down until the next connect.
    func countConnectionFailure() {
        state.withLock { state in
            state.stats.connectionFailures += 1
            state.stats.isDown = true
        }
    }

    /// Counts a connection made; one after an earlier connection (or a failed attempt) is a reconnect.
    func countConnected(reconnect: Bool) {
        state.withLock { state in
            if reconnect { state.stats.reconnects += 1 }
            state.stats.isDown = false
        }
    }

    /// Counts a request that ended with a client-side error (not a cancellation, not a server error reply).
    func countFailedRequest() {
        state.withLock { $0.stats.failedRequests += 1 }
    }

    var queuedRequests: Int {
        state.withLock { $0.queue.count }
    }

    var ownerThreadHasExited: Bool {
        state.withLock { $0.ownerThreadHasExited }
    }

    // MARK: Callers' side

    /// Starts the owner thread (pthread_create, detached); it holds a reference to `self` until it ends.
    func start() {
        let retained = Unmanaged.passRetained(self)
        var thread = pthread_t()
        let status = pthread_create(
            &thread, nil,
            { raw in
                guard let raw else {
                    return nil
                }
                let core = Unmanaged<ClientCore>.fromOpaque(raw).takeRetainedValue()
                core.runOwnerThread()
                return nil
            }, retained.toOpaque())
        if status == 0 {
            pthread_detach(thread)
        } else {
            retained.release()
            state.withLock { state in
                state.closed = true
                let reason = String(cString: strerror(status))
                state.startFailure = "cannot start a thread for Redis at \(endpoint): \(reason)"
                state.ownerThreadHasExited = true
            }
        }
    }

    func submit(_ work: Work, retry: RedisRetry) async throws -> [RedisReply] {
        let id = state.withLock { state in
            state.nextID += 1
            return state.nextID
        }
        return try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<[RedisReply], any Error>) in
                // Checked under the lock that cancel(id:) takes: the task's cancelled flag is set before its handler
                // runs, so either the handler finds the request queued or this sees the flag.
                let rejection: (any Error)? = state.withLock { state in
                    if state.closed {
                        return closedError(state)
                    }
                    if Task.isCancelled {
                        return CancellationError()
                    }
                    state.queue.append(Request(id: id, work: work, retry: retry, destination: .caller(continuation)))
                    return nil
                }
                if let rejection {
                    continuation.resume(throwing: rejection)
                } else {
                    state.signal()
                }
            }
        } onCancel: {
            cancel(id: id)
        }
    }

    /// Queues `work` and returns at once; its replies come to the returned `PendingReplies`. Not tied to the calling
    /// task: its cancellation does not withdraw the request.
    func start(_ work: Work, retry: RedisRetry) -> PendingReplies {
        let pending = PendingReplies()
        let rejection: RedisClientError? = state.withLock { state in
            if state.closed { return closedError(state) }
            state.nextID += 1
            state.queue.append(Request(id: state.nextID, work: work, retry: retry, destination: .pending(pending)))
            return nil
        }
        if let rejection {
            pending.deliver(.failure(rejection))
        } else {
            state.signal()
        }
        return pending
    }

    /// A queued request is dropped (CancellationError); one in progress is interrupted.
    private func cancel(id: UInt64) {
        let dropped: Request? = state.withLock { state in
            if let index = state.queue.firstIndex(where: { $0.id == id }) {
                return state.queue.remove(at: index)
            }
            if state.current?.id == id {
                state.current?.cancelled = true
                Self.shutDownSocket(&state)
            }
            return nil
        }
        dropped?.destination.resume(throwing: CancellationError())
        state.signal()
    }

    func interrupt() {
        state.withLock { state in
            guard state.current != nil else {
                return
            }
            state.current?.interrupted = true
            Self.shutDownSocket(&state)
        }
        state.signal()
    }

    func close() {
        let pending: [Request] = state.withLock { state in
            guard !state.closed else {
                return []
            }
            state.closed = true
            let pending = state.queue
            state.queue = []
            if state.current != nil {
                Self.shutDownSocket(&state)
            }
            return pending
        }
        let error = state.withLock { closedError($0) }
        for request in pending {
            request.destination.resume(throwing: error)
        }
        state.signal()
    }

    /// shutdown(2) of the registered socket, which makes a blocked read on the owner thread return.
    private static func shutDownSocket(_ state: inout State) {
        guard let socket = state.socket else {
            return
        }
        shutdown(socket, Int32(SHUT_RDWR))
        state.socketShutDown = true
    }

    private func closedError(_ state: State) -> RedisClientError {
        RedisClientError(
            code: .closed,
            message: state.startFailure ?? "Redis client \"\(options.name)\" for \(endpoint) is closed"
        )
    }

    // MARK: Owner thread's side

    private func runOwnerThread() {
        nr_redis_name_thread(String("redis-\(options.name)".utf8.prefix(15)) ?? "redis")
        var worker = OwnerThreadConnection(core: self)
        while let requests = nextRequests() {
            if requests.count > 1, let results = worker.performTogether(requests) {
                state.withLock { $0.current = nil }
                for (request, result) in zip(requests, results) {
                    request.destination.resume(with: result)
                }
                continue
            }
            // One by one; requests that were to go together are each sent again (they are all idempotent).
            for (index, request) in requests.enumerated() {
                if index > 0 {
                    state.withLock { $0.current = Current(id: request.id) }
                }
                let result = worker.perform(request)
                if case .failure(let error) = result, error is RedisClientError {
                    countFailedRequest()
                }
                state.withLock { $0.current = nil }
                request.destination.resume(with: result)
            }
        }
        worker.dropConnection()
        state.withLock { $0.ownerThreadHasExited = true }
    }

    /// At most this many queued requests go out in one round trip.
    static let requestsPerRoundTrip = 16

    /// Waits for the next request and makes it current; nil once closed. When it may go together with others
    /// (`mayGoTogether`), the ones queued right behind it that may too come with it: requests from several tasks
    /// at once (a slot's result, another's claim) then share one round trip. The first one is current: a cancel or
    /// an interrupt of it shuts the socket down for all.
    private func nextRequests() -> [Request]? {
        let next: [Request]?? = state.wait { state in
            if state.closed {
                return .some(nil)
            }
            guard !state.queue.isEmpty else {
                return nil
            }
            var taken = [state.queue.removeFirst()]
            if Self.mayGoTogether(taken[0]) {
                while taken.count < Self.requestsPerRoundTrip, let next = state.queue.first, Self.mayGoTogether(next) {
                    taken.append(state.queue.removeFirst())
                }
            }
            state.current = Current(id: taken[0].id)
            return .some(taken)
        }
        return next ?? nil
    }

    /// Commands that are safe to resend (`.idempotent`), with the default read timeout and none that blocks on the
    /// server (it would hold the others back): if the shared round trip fails, each is sent again on its own.
    private static func mayGoTogether(_ request: Request) -> Bool {
        guard case .commands(let commands, readTimeout: nil) = request.work, case .idempotent = request.retry else {
            return false
        }
        return commands.allSatisfy { $0.serverBlockTime == nil }
    }

    /// Why the current request must end now, if it must: cancelled, interrupted, or the client closed.
    /// `mayHaveBeenSent` picks .connectionLost over .closed for a command whose reply was cut off.
    func stopReason(mayHaveBeenSent: Bool, commandName: String) -> (any Error)? {
        state.withLock { state in
            if state.current?.cancelled == true {
                return CancellationError()
            }
            if state.closed {
                if mayHaveBeenSent {
                    return RedisClientError(
                        code: .connectionLost,
                        message: "Redis client \"\(options.name)\" for \(endpoint) was closed while waiting for "
                            + "the reply to \(commandName)"
                    )
                }
                return closedError(state)
            }
            if state.current?.interrupted == true {
                return RedisClientError(
                    code: .connectionLost,
                    message: "\(commandName) to Redis at \(endpoint) was interrupted"
                )
            }
            return nil
        }
    }

    /// Pauses the owner thread for `duration` (cut to the deadline), waking early on cancellation, interrupt or close.
    func pause(for duration: Duration, deadline: ContinuousClock.Instant?) {
        var wait = duration
        if let deadline {
            wait = min(wait, max(deadline - .now, .zero))
        }
        _ = state.wait(timeout: wait) { state -> Void? in
            let current = state.current
            return state.closed || current?.cancelled == true || current?.interrupted == true ? () : nil
        }
    }

    /// Registers a new connection's socket. If the current request was stopped while it connected, shuts the socket
    /// down at once, as shutDownSocket would have.
    func register(socket: Int32) {
        state.withLock { state in
            state.socket = socket
            state.socketShutDown = false
            if state.closed || state.current?.cancelled == true || state.current?.interrupted == true {
                Self.shutDownSocket(&state)
            }
        }
    }

    /// Unregisters the socket before the connection is freed; returns whether we had shut it down ourselves.
    func unregisterSocket() -> Bool {
        state.withLock { state in
            let shutDown = state.socketShutDown
            state.socket = nil
            state.socketShutDown = false
            return shutDown
        }
    }

    /// Whether we shut the registered socket down ourselves.
    var socketWasShutDown: Bool {
        state.withLock { $0.socketShutDown }
    }

    func countConnectionAttempt() {
        state.withLock { $0.connectionAttempts += 1 }
    }
}

/// The owner thread's own state: the connection and the up/down bookkeeping for log lines.
private struct OwnerThreadConnection {
    let core: ClientCore
    var connection: RedisConnection?
    /// A connection has been up at some point.
    var everConnected = false
    /// A "lost"/"cannot reach" line was logged and the matching "reconnected"/"connected" line is due.
    var downLogged = false
    /// A connection attempt failed since the last connection was made (the next one counts as a reconnect).
    var failedSinceUp = false

    init(core: ClientCore) {
        self.core = core
    }

    private var name: String {
        core.options.name
    }

    mutating func perform(_ request: ClientCore.Request) -> Result<[RedisReply], any Error> {
        let retrying: Bool
        let resendAfterLoss: Bool
        let deadline: ContinuousClock.Instant?
        switch request.retry {
        case .never:
            (retrying, resendAfterLoss, deadline) = (false, false, nil)
        case .whileUnreachable(let limit):
            (retrying, resendAfterLoss, deadline) = (true, false, limit)
        case .idempotent(let limit):
            (retrying, resendAfterLoss, deadline) = (true, true, limit)
        }
        func deadlinePassed() -> Bool {
            deadline.map { ContinuousClock.now >= $0 } ?? false
        }
        let what: String
        switch request.work {
        case .connect:
            what = "the connection"
        case .commands(let commands, _):
            what = commands.count == 1 ? commands[0].name : "a pipeline of \(commands.count) commands"
        }

        var failures = 0
        while true {
            if let stop = core.stopReason(mayHaveBeenSent: false, commandName: what) {
                return .failure(stop)
            }
            let live: RedisConnection
            do {
                live = try connected(retrying: retrying)
            } catch {
                if let stop = core.stopReason(mayHaveBeenSent: false, commandName: what) {
                    return .failure(stop)
                }
                if error.code == .connectionFailed && retrying && !deadlinePassed() {
                    failures += 1
                    core.pause(for: backoff(afterFailures: failures), deadline: deadline)
                    continue
                }
                return .failure(error)
            }
            guard case .commands(let commands, let readTimeout) = request.work else {
                return .success([])
            }
            do {
                let replies = try live.pipeline(commands, readTimeout: readTimeout, describedAs: what)
                // Right after a restart Redis answers LOADING until its data is read: the command did not run.
                if retrying, commands.count == 1, case .error(let message) = replies[0], message.hasPrefix("LOADING"),
                    !deadlinePassed()
                {
                    failures += 1
                    core.pause(for: backoff(afterFailures: failures), deadline: deadline)
                    continue
                }
                return .success(replies)
            } catch {
                let stop = core.stopReason(mayHaveBeenSent: true, commandName: what)
                dropConnection()
                if let stop {
                    return .failure(stop)
                }
                if error.code == .connectionLost {
                    core.countConnectionFailure()
                    noteDown(reason: error.reason, retrying: retrying)
                    if resendAfterLoss && !deadlinePassed() {
                        if failures > 0 {
                            core.pause(for: backoff(afterFailures: failures), deadline: deadline)
                        }
                        failures += 1
                        continue
                    }
                }
                return .failure(error)
            }
        }
    }

    /// Several requests' commands in one pipeline, each request getting its own replies; nil when that did not
    /// work out (no live connection, the client stopping, a lost connection, Redis still loading), and then nothing
    /// is answered: the caller sends each request on its own, which is safe since they are all idempotent.
    mutating func performTogether(_ requests: [ClientCore.Request]) -> [Result<[RedisReply], any Error>]? {
        let what = "a pipeline of \(requests.count) requests"
        guard core.stopReason(mayHaveBeenSent: false, commandName: what) == nil,
            let live = connection, !core.socketWasShutDown, !live.peerHasClosed
        else {
            return nil
        }
        var commands: [RedisCommand] = []
        var counts: [Int] = []
        for request in requests {
            guard case .commands(let some, _) = request.work else { return nil }
            commands += some
            counts.append(some.count)
        }
        let replies: [RedisReply]
        do {
            replies = try live.pipeline(commands, readTimeout: nil, describedAs: what)
        } catch {
            dropConnection()
            if error.code == .connectionLost, core.stopReason(mayHaveBeenSent: true, commandName: what) == nil {
                core.countConnectionFailure()
                noteDown(reason: error.reason, retrying: true)
            }
            return nil
        }
        var results: [Result<[RedisReply], any Error>] = []
        var start = 0
        for count in counts {
            let own = Array(replies[start..<start + count])
            start += count
            // Right after a restart Redis answers LOADING until its data is read: the one-by-one path waits for it.
            if count == 1, case .error(let message) = own[0], message.hasPrefix("LOADING") { return nil }
            results.append(.success(own))
        }
        return results
    }

    /// The live connection, or a new one (redisConnectWithTimeout, AUTH, SELECT).
    private mutating func connected(retrying: Bool) throws(RedisClientError) -> RedisConnection {
        if let connection {
            let shutDownByUs = core.socketWasShutDown
            if !shutDownByUs && !connection.peerHasClosed {
                return connection
            }
            dropConnection()
            if !shutDownByUs {
                core.countConnectionFailure()
                noteDown(reason: "the server closed the connection", retrying: retrying)
            }
        }
        core.countConnectionAttempt()
        do {
            let fresh = try RedisConnection(
                endpoint: core.endpoint,
                connectTimeout: core.options.connectTimeout,
                readTimeout: core.options.readTimeout
            )
            core.register(socket: fresh.fileDescriptor)
            connection = fresh
            core.countConnected(reconnect: everConnected || failedSinceUp)
            failedSinceUp = false
            noteUp()
            return fresh
        } catch {
            if error.code == .connectionFailed {
                core.countConnectionFailure()
                failedSinceUp = true
                noteDown(reason: error.reason, retrying: retrying)
            }
            throw error
        }
    }

    /// Unregisters the socket, then frees the connection (redisFree closes the socket).
    mutating func dropConnection() {
        guard connection != nil else {
            return
        }
        _ = core.unregisterSocket()
        connection = nil
    }

    private mutating func noteDown(reason: String, retrying: Bool) {
        guard !downLogged else {
            return
        }
        if everConnected {
            core.log("\(name): lost connection to Redis at \(core.endpoint): \(reason); reconnecting")
            downLogged = true
        } else if retrying {
            core.log("\(name): cannot reach Redis at \(core.endpoint): \(reason); retrying")
            downLogged = true
        }
    }

    private mutating func noteUp() {
        if downLogged {
            core.log("\(name): \(everConnected ? "reconnected" : "connected") to Redis at \(core.endpoint)")
            downLogged = false
        }
        everConnected = true
    }

    /// initialBackoff × 2^(failures−1), capped at maximumBackoff, times a random factor in 0.5...1 (jitter, so that
    /// many runners do not reconnect in step).
    private func backoff(afterFailures failures: Int) -> Duration {
        let maximum = core.options.maximumBackoff
        var delay = core.options.initialBackoff
        var doublings = failures - 1
        while doublings > 0 && delay < maximum {
            delay *= 2
            doublings -= 1
        }
        return min(delay, maximum) * Double.random(in: 0.5...1.0)
    }
}
