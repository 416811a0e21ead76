import Foundation
import RedisClient
import RunnerProtocol
import TestSupport
import XCTest

@testable import RunnerCore

/// The control channel read and answered directly: what a sender waiting for its command's outcome relies on.
final class ControlChannelTests: IntegrationTestCase {
    func testAnOutcomeIsReportedEvenWhenTheCommandCancelsTheReader() async throws {
        let client = RedisClient(endpoint: endpoint)
        defer { client.close() }
        let keyspace = Keyspace(namespace: namespace)
        let channel = ControlChannel(
            client: client, keyspace: keyspace, runner: "r1", block: .seconds(5),
            store: JobStore(client: client, keyspace: keyspace), logger: Logger(label: "control", level: .error))
        let cursors = try await channel.start()
        let sent = try XCTUnwrap(
            try send(["XADD", key("control:r1"), "*", ControlField.command, "shutdown", ControlField.sentBy, "test"])
                .string)
        // A shutdown cancels the reader while its outcome is being written, as the worker does: the reader must still
        // report it.
        let reader = Task {
            await channel.run(from: cursors) { _ in
                withUnsafeCurrentTask { $0?.cancel() }
                return ControlReply(outcome: .accepted)
            }
        }
        await reader.value
        let events = try send(["XRANGE", key("events"), "-", "+"]).array ?? []
        let outcomes = events.compactMap { entry -> [String: String]? in
            let pairs = entry.array?[1].fieldPairs ?? []
            let fields = Dictionary(pairs.map { ($0.name, String(decoding: $0.value, as: UTF8.self)) }) { a, _ in a }
            return fields["type"] == EventType.runnerCommand.rawValue ? fields : nil
        }
        XCTAssertEqual(outcomes.count, 1, "\(events)")
        let data = try XCTUnwrap(outcomes.first?["data"])
        XCTAssertTrue(data.contains("\"command_id\":\"\(sent)\""), data)
        XCTAssertTrue(data.contains("\"outcome\":\"accepted\""), data)
    }
}
