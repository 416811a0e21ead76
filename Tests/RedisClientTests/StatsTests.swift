import Foundation
import TestSupport
import XCTest

@testable import RedisClient

/// RedisClient.stats: what a client met, for the worker's metrics.
final class StatsTests: XCTestCase {
    func testStatsCountFailuresLossesAndReconnects() async throws {
        let server = try RedisServerProcess()
        defer { try? server.stop() }
        let client = RedisClient(endpoint: server.endpoint, options: testOptions())
        defer { client.close() }
        XCTAssertEqual(client.stats, RedisClientStats())
        await assertEqualAsync(try await client.send(RedisCommand("PING")), .status("PONG"))
        XCTAssertEqual(client.stats, RedisClientStats(), "the first connection is no reconnect")

        try server.stop()
        do {
            _ = try await client.send(RedisCommand("PING"))
            XCTFail("PING reached a stopped server")
        } catch let error as RedisClientError {
            XCTAssertTrue([.connectionLost, .connectionFailed].contains(error.code), "\(error)")
        }
        var down = client.stats
        XCTAssertTrue(down.isDown)
        XCTAssertGreaterThanOrEqual(down.connectionFailures, 1)
        XCTAssertEqual(down.failedRequests, 1)
        XCTAssertEqual(down.reconnects, 0)

        try server.restart()
        await assertEqualAsync(try await client.send(RedisCommand("PING")), .status("PONG"))
        let up = client.stats
        XCTAssertFalse(up.isDown)
        XCTAssertEqual(up.reconnects, 1)
        XCTAssertEqual(up.failedRequests, 1)
        down.isDown = false
        down.reconnects = 1
        XCTAssertEqual(up, down, "a connection made adds nothing but the reconnect")
        // A server error reply is no client error.
        _ = try? await client.send(RedisCommand("NOSUCHCOMMAND"))
        XCTAssertEqual(client.stats, up)
        XCTAssertEqual(client.name, "test")
    }
}
