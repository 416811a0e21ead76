import Foundation
import TestSupport
import XCTest

@testable import RedisClient

/// RedisClient (owner thread, queue, reconnects, interrupt, cancellation, close) against a real redis-server.
final class ClientTests: XCTestCase {
    private var server: RedisServerProcess!

    override func setUpWithError() throws {
        server = try RedisServerProcess()
    }

    override func tearDownWithError() throws {
        try server?.stop()
        server = nil
    }

    private func waitUntilBlocked(_ count: Int = 1) async throws {
        let server = try XCTUnwrap(server)
        let blocked = await eventually(timeout: .seconds(5)) { (try? server.blockedClients()) == count }
        XCTAssertTrue(blocked, "expected \(count) blocked client(s)")
    }

    func testSendPipelineAndServerErrors() async throws {
        let client = RedisClient(endpoint: server.endpoint, options: testOptions())
        defer { client.close() }
        try await client.connect()
        await assertEqualAsync(try await client.send(RedisCommand("SET", "a", "x")), .status("OK"))
        await assertEqualAsync(try await client.send(RedisCommand("GET", "a")), bulk("x"))
        await assertEqualAsync(
            try await client.pipeline([
                RedisCommand("INCR", "a"), RedisCommand("APPEND", "a", "y"), RedisCommand("GET", "a"),
            ]),
            [.error("ERR value is not an integer or out of range"), .integer(2), bulk("xy")]
        )
        await assertEqualAsync(try await client.pipeline([]), [])

        let error = await thrownError {
            try await client.send(RedisCommand("XREADGROUP", "GROUP", "nogroup", "c", "STREAMS", "nostream", ">"))
        }
        let serverError = try XCTUnwrap(error as? RedisServerError)
        XCTAssertEqual(serverError.kind, "NOGROUP")
        XCTAssertEqual(
            serverError.message,
            "NOGROUP No such key 'nostream' or consumer group 'nogroup' in XREADGROUP with GROUP option"
        )
        XCTAssertEqual(client.connectionAttempts, 1)
    }

    func testConcurrentCallersShareOneConnection() async throws {
        let client = RedisClient(endpoint: server.endpoint, options: testOptions())
        defer { client.close() }
        try await withThrowingTaskGroup(of: Void.self) { group in
            for _ in 0..<50 {
                group.addTask { _ = try await client.send(RedisCommand("INCR", "n")) }
            }
            try await group.waitForAll()
        }
        await assertEqualAsync(try await client.send(RedisCommand("GET", "n")), bulk("50"))
        XCTAssertEqual(client.connectionAttempts, 1)
    }

    /// Idempotent requests queued at once share round trips; each still gets exactly its own replies, in order,
    /// also when one is a pipeline and when a blocking or non-idempotent request sits between them.
    func testRequestsQueuedTogetherEachGetTheirOwnReplies() async throws {
        let client = RedisClient(endpoint: server.endpoint, options: testOptions())
        defer { client.close() }
        try await client.connect()
        _ = try await client.send(RedisCommand(["RPUSH", "ready"] + (0..<50).map { "r\($0)" }))
        let retry = RedisRetry.idempotent(deadline: nil)
        try await withThrowingTaskGroup(of: Void.self) { group in
            for index in 0..<200 {
                group.addTask {
                    switch index % 4 {
                    case 0:
                        let replies = try await client.pipeline(
                            [RedisCommand("SET", "k\(index)", "v\(index)"), RedisCommand("GET", "k\(index)")],
                            retry: retry)
                        XCTAssertEqual(replies, [.status("OK"), bulk("v\(index)")])
                    case 1:
                        let reply = try await client.send(RedisCommand("ECHO", "e\(index)"), retry: retry)
                        XCTAssertEqual(reply, bulk("e\(index)"))
                    case 2:
                        // Not idempotent: sent on its own.
                        let reply = try await client.send(RedisCommand("RPUSH", "list", "\(index)"))
                        XCTAssertNotNil(reply.int)
                    default:
                        // Blocking (it finds an element at once): sent on its own too.
                        let reply = try await client.send(RedisCommand("BLPOP", "ready", "5"), retry: retry)
                        XCTAssertEqual(reply.array?.first, bulk("ready"))
                    }
                }
            }
            try await group.waitForAll()
        }
        await assertEqualAsync(try await client.send(RedisCommand("LLEN", "list")), .integer(50))
        XCTAssertEqual(client.connectionAttempts, 1)
    }

    func testBlockWithLongerReadTimeoutIsNotCutShort() async throws {
        let client = RedisClient(endpoint: server.endpoint, options: testOptions(readTimeout: .milliseconds(500)))
        defer { client.close() }
        _ = try await client.send(RedisCommand("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM"))
        let start = ContinuousClock.now
        let reply = try await client.send(
            RedisCommand("XREADGROUP", "GROUP", "g", "c", "BLOCK", "1500", "STREAMS", "s", ">"),
            readTimeout: .milliseconds(2500)
        )
        XCTAssertEqual(reply, .null)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(1400))
        XCTAssertEqual(client.connectionAttempts, 1)
    }

    func testTimeoutDropsTheConnectionAndTheNextCommandReconnects() async throws {
        let log = LogLines()
        let client = RedisClient(endpoint: server.endpoint, options: testOptions(), log: log.sink)
        defer { client.close() }
        let error = await thrownError {
            try await client.send(RedisCommand("BLPOP", "empty", "0"), readTimeout: .milliseconds(200))
        }
        XCTAssertEqual(
            error as? RedisClientError,
            RedisClientError(code: .timeout, message: "Redis at \(server.endpoint) did not answer BLPOP within 0.2 s")
        )
        await assertEqualAsync(try await client.send(RedisCommand("PING")), .status("PONG"))
        XCTAssertEqual(client.connectionAttempts, 2)
        XCTAssertEqual(log.all, [])
    }

    func testConnectionRefused() async throws {
        let port = try freeLoopbackPort()
        let log = LogLines()
        let endpoint = RedisEndpoint(host: "127.0.0.1", port: port)
        let client = RedisClient(endpoint: endpoint, options: testOptions(), log: log.sink)
        defer { client.close() }
        let expected = RedisClientError(
            code: .connectionFailed, message: "cannot reach Redis at 127.0.0.1:\(port): Connection refused"
        )
        let connectError = await thrownError { try await client.connect() }
        XCTAssertEqual(connectError as? RedisClientError, expected)
        let sendError = await thrownError { try await client.send(RedisCommand("PING")) }
        XCTAssertEqual(sendError as? RedisClientError, expected)
        XCTAssertEqual(log.all, [])

        // whileUnreachable gives up at the deadline, after several attempts, with the same error.
        let start = ContinuousClock.now
        let retried = await thrownError {
            try await client.send(RedisCommand("PING"), retry: .whileUnreachable(deadline: .now + .milliseconds(300)))
        }
        XCTAssertEqual(retried as? RedisClientError, expected)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(290))
        XCTAssertGreaterThanOrEqual(client.connectionAttempts, 4)
        XCTAssertEqual(log.all, ["test: cannot reach Redis at 127.0.0.1:\(port): Connection refused; retrying"])
    }

    func testAuthenticationFailureIsNotRetried() async throws {
        let secured = try RedisServerProcess(password: "right")
        defer { try? secured.stop() }
        var wrong = secured.endpoint
        wrong.password = "wrong"
        let client = RedisClient(endpoint: wrong, options: testOptions())
        defer { client.close() }
        let error = await thrownError {
            try await client.send(RedisCommand("PING"), retry: .whileUnreachable(deadline: nil))
        }
        XCTAssertEqual(
            error as? RedisClientError,
            RedisClientError(
                code: .authenticationFailed,
                message: "authentication to Redis at redis://:***@127.0.0.1:\(secured.port) failed: "
                    + "WRONGPASS invalid username-password pair or user is disabled."
            )
        )
        XCTAssertEqual(client.connectionAttempts, 1)

        let right = RedisClient(endpoint: secured.endpoint, options: testOptions())
        defer { right.close() }
        await assertEqualAsync(try await right.send(RedisCommand("ACL", "WHOAMI")), bulk("default"))
    }

    func testSelectedDatabaseViaClient() async throws {
        var endpoint = server.endpoint
        endpoint.database = 2
        let client = RedisClient(endpoint: endpoint, options: testOptions())
        defer { client.close() }
        await assertEqualAsync(try await client.send(RedisCommand("SET", "k", "in2")), .status("OK"))
        XCTAssertEqual(try server.connection(database: 2).send(RedisCommand("GET", "k")), bulk("in2"))
        XCTAssertEqual(try server.connection().send(RedisCommand("EXISTS", "k")), .integer(0))
    }

    func testServerRestartLogsLostAndReconnectedOnce() async throws {
        let log = LogLines()
        let client = RedisClient(endpoint: server.endpoint, options: testOptions(), log: log.sink)
        defer { client.close() }
        await assertEqualAsync(try await client.send(RedisCommand("PING")), .status("PONG"))
        try server.stop()

        let pending = Task {
            try await client.send(
                RedisCommand("SET", "after", "restart"), retry: .whileUnreachable(deadline: .now + .seconds(20))
            )
        }
        let retried = await eventually(timeout: .seconds(10)) { client.connectionAttempts >= 6 }
        XCTAssertTrue(retried)
        try server.restart()
        let reply = try await pending.value
        XCTAssertEqual(reply, .status("OK"))
        await assertEqualAsync(try await client.send(RedisCommand("GET", "after")), bulk("restart"))

        let endpoint = server.endpoint
        XCTAssertEqual(
            log.all,
            [
                "test: lost connection to Redis at \(endpoint): the server closed the connection; reconnecting",
                "test: reconnected to Redis at \(endpoint)",
            ])
    }

    func testPossiblySentCommandIsNotResentWhileUnreachable() async throws {
        let log = LogLines()
        let client = RedisClient(endpoint: server.endpoint, options: testOptions(), log: log.sink)
        defer { client.close() }
        let pending = Task {
            try await client.send(
                RedisCommand("BLPOP", "jobs", "0"), retry: .whileUnreachable(deadline: .now + .seconds(20))
            )
        }
        try await waitUntilBlocked()
        try server.kill()
        let error = await thrownError { try await pending.value }
        XCTAssertEqual(
            error as? RedisClientError,
            RedisClientError(
                code: .connectionLost,
                message: "lost connection to Redis at \(server.endpoint): Server closed the connection"
            )
        )
        XCTAssertEqual(client.connectionAttempts, 1)
        XCTAssertEqual(
            log.all,
            [
                "test: lost connection to Redis at \(server.endpoint): Server closed the connection; reconnecting"
            ])
    }

    func testIdempotentCommandIsResentAfterTheConnectionWasLost() async throws {
        let log = LogLines()
        let client = RedisClient(endpoint: server.endpoint, options: testOptions(), log: log.sink)
        defer { client.close() }
        let pending = Task {
            try await client.send(RedisCommand("BLPOP", "jobs", "0"), retry: .idempotent(deadline: .now + .seconds(20)))
        }
        try await waitUntilBlocked()
        try server.restart()
        // Resent to the new server, where it blocks again until something arrives.
        try await waitUntilBlocked()
        XCTAssertEqual(try server.connection().send(RedisCommand("LPUSH", "jobs", "j1")), .integer(1))
        let reply = try await pending.value
        XCTAssertEqual(reply, .array([bulk("jobs"), bulk("j1")]))
        XCTAssertEqual(log.count(containing: "lost connection"), 1)
        XCTAssertEqual(log.count(containing: "reconnected"), 1)
    }

    func testInterruptBreaksABlockingReadPromptly() async throws {
        let log = LogLines()
        let client = RedisClient(endpoint: server.endpoint, options: testOptions(), log: log.sink)
        defer { client.close() }
        client.interrupt()  // idle: no effect
        let pending = Task {
            try await client.send(
                RedisCommand("XREAD", "BLOCK", "0", "STREAMS", "s", "$"), retry: .idempotent(deadline: nil)
            )
        }
        try await waitUntilBlocked()
        let start = ContinuousClock.now
        client.interrupt()
        let error = await thrownError { try await pending.value }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(1))
        XCTAssertEqual(
            error as? RedisClientError,
            RedisClientError(code: .connectionLost, message: "XREAD to Redis at \(server.endpoint) was interrupted")
        )
        await assertEqualAsync(try await client.send(RedisCommand("PING")), .status("PONG"))
        XCTAssertEqual(client.connectionAttempts, 2)
        XCTAssertEqual(log.all, [])
    }

    func testCancellingABlockedTaskReturnsPromptly() async throws {
        let log = LogLines()
        let client = RedisClient(endpoint: server.endpoint, options: testOptions(), log: log.sink)
        defer { client.close() }
        let blocked = Task {
            try await client.send(RedisCommand("BLPOP", "jobs", "0"))
        }
        try await waitUntilBlocked()
        // Queued behind the BLPOP: cancelling it drops it without touching the blocked read.
        let queued = Task {
            try await client.send(RedisCommand("SET", "never", "written"))
        }
        let queuedUp = await eventually(timeout: .seconds(5)) { client.queuedRequests == 1 }
        XCTAssertTrue(queuedUp)
        queued.cancel()
        await assertTrueAsync(await thrownError { try await queued.value } is CancellationError)
        XCTAssertEqual(try server.blockedClients(), 1)

        let start = ContinuousClock.now
        blocked.cancel()
        let error = await thrownError { try await blocked.value }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(1))
        XCTAssertTrue(error is CancellationError, "\(String(describing: error))")
        XCTAssertEqual(try server.connection().send(RedisCommand("EXISTS", "never")), .integer(0))

        await assertEqualAsync(try await client.send(RedisCommand("PING")), .status("PONG"))
        XCTAssertEqual(log.all, [])

        // A task cancelled before it sends does not send.
        let early = Task {
            withUnsafeCurrentTask { $0?.cancel() }
            return try await client.send(RedisCommand("SET", "early", "1"))
        }
        await assertTrueAsync(await thrownError { try await early.value } is CancellationError)
        XCTAssertEqual(try server.connection().send(RedisCommand("EXISTS", "early")), .integer(0))
    }

    func testAStartedCommandIsCollectedLaterAndNotWithdrawnByCancellation() async throws {
        let client = RedisClient(endpoint: server.endpoint, options: testOptions(name: "started"))
        defer { client.close() }
        let blocked = Task { try await client.send(RedisCommand("BLPOP", "jobs", "0")) }
        try await waitUntilBlocked()
        // Queued behind the BLPOP, from a task that is cancelled before it collects: the write still goes out.
        let collector = Task {
            let pending = client.start(RedisCommand("SET", "started", "1"), retry: .idempotent(deadline: nil))
            withUnsafeCurrentTask { $0?.cancel() }
            return try await pending.value()
        }
        let queuedUp = await eventually(timeout: .seconds(5)) { client.queuedRequests == 1 }
        XCTAssertTrue(queuedUp)
        collector.cancel()
        XCTAssertEqual(try server.connection().send(RedisCommand("RPUSH", "jobs", "x")), .integer(1))
        await assertEqualAsync(try await blocked.value, .array([bulk("jobs"), bulk("x")]))
        await assertEqualAsync(try await collector.value, .status("OK"))
        XCTAssertEqual(try server.connection().send(RedisCommand("GET", "started")), bulk("1"))

        // Its reply may come before it is collected; an error reply is thrown as send throws it.
        let early = client.start(RedisCommand("INCR", "started"))
        let late = client.start(RedisCommand("HGET", "started", "field"))
        let arrived = await eventually(timeout: .seconds(5)) { client.queuedRequests == 0 }
        XCTAssertTrue(arrived)
        await assertEqualAsync(try await early.value(), .integer(2))
        let error = await thrownError { try await late.value() }
        XCTAssertEqual((error as? RedisServerError)?.kind, "WRONGTYPE")

        client.close()
        await assertEqualAsync(
            await thrownError { try await client.start(RedisCommand("PING")).value() } as? RedisClientError,
            RedisClientError(code: .closed, message: "Redis client \"started\" for \(server.endpoint) is closed")
        )
    }

    func testAStartedScriptLoadsItselfWhenItsHashIsUnknownOrFlushed() async throws {
        let client = RedisClient(endpoint: server.endpoint, options: testOptions())
        defer { client.close() }
        let scripts = ScriptRunner(client: client)
        let script = LuaScript(name: "incr-by", source: "return redis.call('INCRBY', KEYS[1], ARGV[1])")
        func started(_ amount: String) async throws -> RedisReply {
            try await scripts.start(script, keys: ["n"], arguments: [Array(amount.utf8)]).value()
        }
        await assertEqualAsync(try await started("2"), .integer(2))  // not loaded yet: goes the way of run
        await assertEqualAsync(try await started("3"), .integer(5))  // EVALSHA at once
        XCTAssertEqual(try server.connection().send(RedisCommand("SCRIPT", "FLUSH")), .status("OK"))
        await assertEqualAsync(try await started("4"), .integer(9))  // NOSCRIPT: loaded again
    }

    func testCancellationEndsABackoff() async throws {
        server = nil
        let port = try freeLoopbackPort()
        let client = RedisClient(endpoint: RedisEndpoint(host: "127.0.0.1", port: port), options: testOptions())
        defer { client.close() }
        let pending = Task {
            try await client.send(RedisCommand("PING"), retry: .whileUnreachable(deadline: nil))
        }
        let retrying = await eventually(timeout: .seconds(5)) { client.connectionAttempts >= 3 }
        XCTAssertTrue(retrying)
        let start = ContinuousClock.now
        pending.cancel()
        await assertTrueAsync(await thrownError { try await pending.value } is CancellationError)
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(1))

        // close() ends a backoff too, with .closed (the command was never sent).
        let attempts = client.connectionAttempts
        let another = Task {
            try await client.send(RedisCommand("PING"), retry: .whileUnreachable(deadline: nil))
        }
        let retryingAgain = await eventually(timeout: .seconds(5)) { client.connectionAttempts >= attempts + 2 }
        XCTAssertTrue(retryingAgain)
        let closing = ContinuousClock.now
        client.close()
        await assertEqualAsync(
            await thrownError { try await another.value } as? RedisClientError,
            RedisClientError(code: .closed, message: "Redis client \"test\" for 127.0.0.1:\(port) is closed")
        )
        XCTAssertLessThan(ContinuousClock.now - closing, .seconds(1))
    }

    func testCloseFailsPendingWorkAndEndsTheThread() async throws {
        let client = RedisClient(endpoint: server.endpoint, options: testOptions(name: "closing"))
        let blocked = Task {
            try await client.send(RedisCommand("BLPOP", "jobs", "0"))
        }
        try await waitUntilBlocked()
        let queued = Task {
            try await client.pipeline([RedisCommand("SET", "a", "1"), RedisCommand("SET", "b", "2")])
        }
        // The pipeline is queued behind the BLPOP once the owner thread's queue holds it.
        let queuedUp = await eventually(timeout: .seconds(5)) { client.queuedRequests == 1 }
        XCTAssertTrue(queuedUp)

        client.close()
        let closed = RedisClientError(
            code: .closed, message: "Redis client \"closing\" for \(server.endpoint) is closed"
        )
        await assertEqualAsync(await thrownError { try await queued.value } as? RedisClientError, closed)
        await assertEqualAsync(
            await thrownError { try await blocked.value } as? RedisClientError,
            RedisClientError(
                code: .connectionLost,
                message: "Redis client \"closing\" for \(server.endpoint) was closed while waiting for the reply "
                    + "to BLPOP"
            )
        )
        await assertEqualAsync(
            await thrownError { try await client.send(RedisCommand("PING")) } as? RedisClientError, closed
        )
        await assertEqualAsync(await thrownError { try await client.connect() } as? RedisClientError, closed)
        client.close()
        let exited = await eventually(timeout: .seconds(5)) { client.ownerThreadHasExited }
        XCTAssertTrue(exited)
        XCTAssertEqual(try server.connection().send(RedisCommand("EXISTS", "a")), .integer(0))
    }

    func testDeinitEndsTheThread() async throws {
        func ownerThreads() -> Int {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task")) ?? []
            return tasks.filter {
                (try? String(contentsOfFile: "/proc/self/task/\($0)/comm", encoding: .utf8)) == "redis-deinit\n"
            }.count
        }
        do {
            let clients = (0..<3).map { _ in
                RedisClient(endpoint: server.endpoint, options: testOptions(name: "deinit"))
            }
            for client in clients {
                await assertEqualAsync(try await client.send(RedisCommand("PING")), .status("PONG"))
            }
            XCTAssertEqual(ownerThreads(), 3)
        }
        let ended = await eventually(timeout: .seconds(5)) { ownerThreads() == 0 }
        XCTAssertTrue(ended)
    }
}
