import RedisClient
import TestSupport
import XCTest

/// RedisConnection against a real redis-server.
final class ConnectionTests: XCTestCase {
    private func connect(_ endpoint: RedisEndpoint, readTimeout: Duration) throws -> RedisConnection {
        try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(1), readTimeout: readTimeout)
    }

    private var server: RedisServerProcess!

    override func setUpWithError() throws {
        server = try RedisServerProcess()
    }

    override func tearDownWithError() throws {
        try server?.stop()
        server = nil
    }

    func testSetGetIsBinarySafe() throws {
        let connection = try server.connection()
        let key: [UInt8] = Array("key\r\nwith\0crlf".utf8)
        let value: [UInt8] = [0x00, 0xff, 0x0d, 0x0a, 0x41, 0x00, 0x24, 0x2a]
        XCTAssertEqual(try connection.send(RedisCommand(bytes: [Array("SET".utf8), key, value])), .status("OK"))
        XCTAssertEqual(try connection.send(RedisCommand(bytes: [Array("GET".utf8), key])), .bulk(value))
        XCTAssertEqual(try connection.send(RedisCommand(bytes: [Array("STRLEN".utf8), key])), .integer(8))
        XCTAssertEqual(try connection.send(RedisCommand("SET", "empty", "")), .status("OK"))
        XCTAssertEqual(try connection.send(RedisCommand("GET", "empty")), .bulk([]))
        XCTAssertEqual(try connection.send(RedisCommand("GET", "missing")), .null)
    }

    func testPipelineOfAThousandCommands() throws {
        let connection = try server.connection()
        let commands = (0..<1000).map { _ in RedisCommand("INCR", "counter") }
        let replies = try connection.pipeline(commands)
        XCTAssertEqual(replies, (1...1000).map { RedisReply.integer($0) })
        XCTAssertEqual(try connection.pipeline([]), [])
        XCTAssertEqual(try connection.send(RedisCommand("GET", "counter")), bulk("1000"))
    }

    func testErrorReplyIsReturnedNotThrown() throws {
        let connection = try server.connection()
        let reply = try connection.send(RedisCommand("NOSUCHCOMMAND", "x"))
        XCTAssertEqual(reply, .error("ERR unknown command 'NOSUCHCOMMAND', with args beginning with: 'x' "))
        XCTAssertFalse(connection.isBroken)
        XCTAssertEqual(try connection.send(RedisCommand("PING")), .status("PONG"))
    }

    func testStreamRepliesWithNestedArraysAndNilPayload() throws {
        let connection = try server.connection()
        XCTAssertEqual(try connection.send(RedisCommand("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")), .status("OK"))
        XCTAssertEqual(try connection.send(RedisCommand("XADD", "s", "1-1", "f", "v")), bulk("1-1"))
        XCTAssertEqual(try connection.send(RedisCommand("XADD", "s", "2-1", "f2", "v2", "f3", "")), bulk("2-1"))
        let first: RedisReply = .array([bulk("1-1"), .array([bulk("f"), bulk("v")])])
        let second: RedisReply = .array([bulk("2-1"), .array([bulk("f2"), bulk("v2"), bulk("f3"), bulk("")])])
        XCTAssertEqual(
            try connection.send(RedisCommand("XREADGROUP", "GROUP", "g", "c", "COUNT", "10", "STREAMS", "s", ">")),
            .array([.array([bulk("s"), .array([first, second])])])
        )
        XCTAssertEqual(try connection.send(RedisCommand("XDEL", "s", "1-1")), .integer(1))
        // Reading the pending list back: the deleted entry's payload is nil.
        XCTAssertEqual(
            try connection.send(RedisCommand("XREADGROUP", "GROUP", "g", "c", "STREAMS", "s", "0")),
            .array([.array([bulk("s"), .array([.array([bulk("1-1"), .null]), second])])])
        )
        XCTAssertEqual(
            try connection.send(RedisCommand("XAUTOCLAIM", "s", "g", "c2", "0", "0-0")),
            .array([bulk("0-0"), .array([second]), .array([bulk("1-1")])])
        )
        XCTAssertEqual(
            try connection.send(RedisCommand("XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "STREAMS", "s", ">")),
            .null
        )
    }

    func testReadTimeoutOverrideLetsABlockOutlastTheDefault() throws {
        let connection = try connect(server.endpoint, readTimeout: .milliseconds(500))
        XCTAssertEqual(try connection.send(RedisCommand("XGROUP", "CREATE", "s", "g", "$", "MKSTREAM")), .status("OK"))
        let read = RedisCommand("XREADGROUP", "GROUP", "g", "c", "BLOCK", "1500", "STREAMS", "s", ">")
        let start = ContinuousClock.now
        XCTAssertEqual(try connection.send(read, readTimeout: .seconds(3)), .null)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start, .milliseconds(1400))
        // The default came back afterwards, and without an override a BLOCK is not cut short either.
        let start2 = ContinuousClock.now
        let shortRead = RedisCommand("XREADGROUP", "GROUP", "g", "c", "BLOCK", "700", "STREAMS", "s", ">")
        XCTAssertEqual(try connection.send(shortRead), .null)
        XCTAssertGreaterThanOrEqual(ContinuousClock.now - start2, .milliseconds(650))
        XCTAssertFalse(connection.isBroken)
    }

    func testReadTimeoutBreaksTheConnection() throws {
        let connection = try server.connection()
        let start = ContinuousClock.now
        let blpop = RedisCommand("BLPOP", "nothing", "0")
        XCTAssertThrowsError(try connection.send(blpop, readTimeout: .milliseconds(200))) {
            XCTAssertEqual(
                $0 as? RedisClientError,
                RedisClientError(
                    code: .timeout, message: "Redis at \(server.endpoint) did not answer BLPOP within 0.2 s"
                )
            )
        }
        XCTAssertLessThan(ContinuousClock.now - start, .seconds(2))
        XCTAssertTrue(connection.isBroken)
        XCTAssertThrowsError(try connection.send(RedisCommand("PING"))) {
            XCTAssertEqual(($0 as? RedisClientError)?.code, .closed)
        }
    }

    func testAuthWithPassword() throws {
        let secured = try RedisServerProcess(password: "s3cr:t@")
        defer { try? secured.stop() }
        let connection = try connect(secured.endpoint, readTimeout: .seconds(2))
        XCTAssertEqual(try connection.send(RedisCommand("ACL", "WHOAMI")), bulk("default"))

        var wrong = secured.endpoint
        wrong.password = "nope"
        XCTAssertThrowsError(try connect(wrong, readTimeout: .seconds(2))) {
            XCTAssertEqual(
                $0 as? RedisClientError,
                RedisClientError(
                    code: .authenticationFailed,
                    message: "authentication to Redis at redis://:***@127.0.0.1:\(secured.port) failed: "
                        + "WRONGPASS invalid username-password pair or user is disabled."
                )
            )
        }
    }

    func testAuthWithACLUser() throws {
        let secured = try RedisServerProcess(aclUser: (user: "runner", password: "pw"))
        defer { try? secured.stop() }
        let connection = try connect(secured.endpoint, readTimeout: .seconds(2))
        XCTAssertEqual(try connection.send(RedisCommand("ACL", "WHOAMI")), bulk("runner"))

        var wrong = secured.endpoint
        wrong.password = "nope"
        XCTAssertThrowsError(try connect(wrong, readTimeout: .seconds(2))) {
            XCTAssertEqual(($0 as? RedisClientError)?.code, .authenticationFailed)
            XCTAssertEqual(
                ($0 as? RedisClientError)?.message,
                "authentication to Redis at redis://runner:***@127.0.0.1:\(secured.port) failed: "
                    + "WRONGPASS invalid username-password pair or user is disabled."
            )
        }
    }

    func testSelectDatabase() throws {
        let two = try server.connection(database: 2)
        XCTAssertEqual(try two.send(RedisCommand("SET", "where", "two")), .status("OK"))
        XCTAssertEqual(try server.connection().send(RedisCommand("GET", "where")), .null)
        XCTAssertEqual(try server.connection(database: 2).send(RedisCommand("GET", "where")), bulk("two"))
        XCTAssertEqual(try two.send(RedisCommand("CLIENT", "INFO")).string?.contains(" db=2 "), true)

        XCTAssertThrowsError(try server.connection(database: 99)) {
            XCTAssertEqual(
                $0 as? RedisClientError,
                RedisClientError(
                    code: .invalidEndpoint,
                    message: "Redis at redis://127.0.0.1:\(server.port)/99 refused SELECT 99: "
                        + "ERR DB index is out of range"
                )
            )
        }
    }

    func testConnectionRefusedNamesTheEndpoint() throws {
        let port = try freeLoopbackPort()
        let endpoint = RedisEndpoint(host: "127.0.0.1", port: port)
        XCTAssertThrowsError(try RedisConnection(endpoint: endpoint, connectTimeout: .seconds(1), readTimeout: nil)) {
            XCTAssertEqual(
                $0 as? RedisClientError,
                RedisClientError(
                    code: .connectionFailed,
                    message: "cannot reach Redis at 127.0.0.1:\(port): Connection refused"
                )
            )
            XCTAssertEqual(($0 as? RedisClientError)?.commandWasNotSent, true)
        }
    }

    func testServerGoneIsConnectionLost() throws {
        let connection = try server.connection()
        XCTAssertEqual(try connection.send(RedisCommand("PING")), .status("PONG"))
        try server.kill()
        XCTAssertThrowsError(try connection.send(RedisCommand("PING"))) {
            XCTAssertEqual(($0 as? RedisClientError)?.code, .connectionLost)
            XCTAssertEqual(($0 as? RedisClientError)?.commandWasNotSent, false)
        }
        XCTAssertTrue(connection.isBroken)
    }

    func testFixtureRestartsOnTheSamePortWithAppendOnlyData() throws {
        let durable = try RedisServerProcess(appendOnly: true)
        defer { try? durable.stop() }
        let port = durable.port
        XCTAssertEqual(try durable.connection().send(RedisCommand("SET", "kept", "yes")), .status("OK"))
        let pid = try XCTUnwrap(durable.pid)
        XCTAssertTrue(processIsAlive(pid))
        try durable.restart()
        XCTAssertFalse(processIsAlive(pid))
        XCTAssertEqual(durable.port, port)
        XCTAssertEqual(try durable.connection().send(RedisCommand("GET", "kept")), bulk("yes"))
        let logFile = durable.directory.appendingPathComponent("redis.log")
        XCTAssertTrue(FileManager.default.fileExists(atPath: logFile.path))
        try durable.stop()
        XCTAssertNil(durable.pid)
        XCTAssertFalse(processIsAlive(pid))
        XCTAssertFalse(processIsAlive(0))
    }
}
