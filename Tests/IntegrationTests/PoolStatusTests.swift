import Foundation
import RedisClient
import RunnerCore
import RunnerProtocol
import TestSupport
import XCTest

/// `runner status` / `runner top`'s view of the queues, read straight from Redis.
final class PoolStatusTests: IntegrationTestCase {
    func testLagNeverCountsEntriesDeletedBeforeTheyWereRead() async throws {
        let stream = key("jobs:default")
        _ = try send(["XGROUP", "CREATE", stream, Keyspace.consumerGroup, "0", "MKSTREAM"])
        // One entry read and done, then three deleted before anyone read them (queued jobs that were cancelled):
        // Redis's own lag says 3 for a stream that holds nothing.
        let done = try XCTUnwrap(try send(["XADD", stream, "*", "id", "a", "spec", "{}"]).string)
        _ = try send(["XREADGROUP", "GROUP", Keyspace.consumerGroup, "c", "COUNT", "1", "STREAMS", stream, ">"])
        _ = try send(["XACK", stream, Keyspace.consumerGroup, done])
        _ = try send(["XDEL", stream, done])
        for id in ["b", "c", "d"] {
            let entry = try XCTUnwrap(try send(["XADD", stream, "*", "id", id, "spec", "{}"]).string)
            _ = try send(["XDEL", stream, entry])
        }
        let client = RedisClient(endpoint: endpoint)
        defer { client.close() }
        let status = try await PoolClient(client: client, keyspace: Keyspace(namespace: namespace)).status()
        let queue = try XCTUnwrap(status.queues.first { $0.name == "default" })
        XCTAssertEqual(queue.length, 0)
        XCTAssertEqual(queue.pending, 0)
        XCTAssertEqual(queue.lag, 0)

        // An unread entry is counted.
        _ = try send(["XADD", stream, "*", "id", "e", "spec", "{}"])
        let after = try await PoolClient(client: client, keyspace: Keyspace(namespace: namespace)).status()
        XCTAssertEqual(after.queues.first { $0.name == "default" }?.lag, 1)
    }
}
