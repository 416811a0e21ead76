import Foundation
import RedisClient
import RunnerProtocol
import TestSupport
import XCTest

@testable import RunnerCore

/// Redis does not undo the writes of a script that errors halfway: a job script refuses a key it writes that exists
/// with another type before its first write, so such a key leaves every key as it was.
extension ScriptIdempotencyTests {
    /// Every key of the namespace: its type, DUMP (a stream's consumer groups and pending entries included) and TTL.
    private func snapshot() throws -> [String: [String]] {
        var state: [String: [String]] = [:]
        var cursor = "0"
        repeat {
            let reply = try send(["SCAN", cursor, "MATCH", "{\(namespace)}:*", "COUNT", "1000"]).array ?? []
            cursor = reply.first?.string ?? "0"
            for name in (reply.count > 1 ? reply[1].array ?? [] : []).compactMap(\.string) {
                let dump = try send(["DUMP", name]).bytes.map { Data($0).base64EncodedString() } ?? "none"
                state[name] = [try send(["TYPE", name]).string ?? "?", dump, "\(try send(["PTTL", name]).int ?? -3)"]
            }
        } while cursor != "0"
        return state
    }

    func testTheRouteScriptRefusesAKeyOfTheWrongTypeBeforeItsFirstWrite() async throws {
        let gpu = try LabelSet(["gpu": "yes"])
        let spec = #"{"argv":["true"],"requires":{"gpu":"yes"}}"#
        _ = try send(["XADD", key("jobs:default"), "*", "id", "wt-1", "spec", spec])
        let delivered = try deliver()
        let entry = try XCTUnwrap(delivered.entry)
        let fields = delivered.fields
        // Each key the script writes, in turn a string; the source stream's XACK is its first write, so a wrong type
        // there fails before anything is written without a check.
        let written = [
            (key("jobs:default:req:\(gpu.requirementId)"), "stream"), (key("requirements:default"), "hash"),
            (key("events"), "stream"), (key("job:wt-1"), "hash"),
        ]
        for (name, type) in written {
            _ = try send(["SET", name, "not a \(type)"])
            let before = try snapshot()
            var outcome: String
            do {
                outcome =
                    "\(try await store.route(entry, fields: fields, requirement: gpu, owner: owner, retry: .never))"
            } catch {
                outcome = "\(error)"
            }
            XCTAssertEqual(outcome, #"wrongType("WRONGTYPE key \#(name) is a string, expected a \#(type)")"#)
            XCTAssertEqual(try snapshot(), before, "the route script wrote something with \(name) a string")
            _ = try send(["DEL", name])
        }
        // With the keys right, the same call routes the entry.
        let routed = try await store.route(entry, fields: fields, requirement: gpu, owner: owner, retry: .never)
        guard case .routed = routed else { return XCTFail("not routed: \(routed)") }
    }

    func testClaimAndCompleteRefuseAnEventsStreamOfTheWrongTypeBeforeTheirFirstWrite() async throws {
        _ = try await store.submit(id: "wt-2", spec: JobSpec(command: .argv(["true"])), queue: "default")
        let entry = try XCTUnwrap(try deliver().entry)
        _ = try send(["RENAME", key("events"), key("events-kept")])
        _ = try send(["SET", key("events"), "not a stream"])
        let expected = "Redis replied with an error: WRONGTYPE key \(key("events")) is a string, expected a stream"
        var before = try snapshot()
        do {
            _ = try await store.claim(entry: entry, owner: owner, receivedData: [:], retry: .never)
            XCTFail("claimed with the events stream a string")
        } catch {
            XCTAssertEqual("\(error)", expected)
        }
        XCTAssertEqual(try snapshot(), before, "the claim script wrote something")

        _ = try send(["DEL", key("events")])
        guard case .claimed = try await store.claim(entry: entry, owner: owner, receivedData: [:], retry: .never) else {
            return XCTFail("not claimed")
        }
        _ = try send(["DEL", key("events")])
        _ = try send(["SET", key("events"), "not a stream"])
        before = try snapshot()
        do {
            _ = try await store.complete(
                entry: entry, owner: owner, result: JobResultRecord(state: .succeeded, exitCode: 0), startedAtMs: "1",
                startedPid: nil, retry: .never)
            XCTFail("completed with the events stream a string")
        } catch {
            XCTAssertEqual("\(error)", expected)
        }
        XCTAssertEqual(try snapshot(), before, "the complete script wrote something")
    }

    /// The fencing counter needs no type check: its INCR is the claim's first write (the idempotency key is set
    /// after it), so a counter that is no number refuses the claim with nothing written.
    func testAClaimWithAFencingCounterThatIsNoNumberWritesNothing() async throws {
        let spec = #"{"argv":["true"]}"#
        _ = try send(["XADD", key("jobs:default"), "*", "id", "wt-3", "spec", spec, "idempotency_key", "k-3"])
        let entry = try XCTUnwrap(try deliver().entry)
        _ = try send(["SET", key("fencing"), "not a number"])
        let before = try snapshot()
        do {
            _ = try await store.claim(entry: entry, owner: owner, receivedData: [:], retry: .never)
            XCTFail("claimed with the fencing counter no number")
        } catch {
            XCTAssertTrue("\(error)".contains("value is not an integer"), "\(error)")
        }
        XCTAssertEqual(try snapshot(), before, "the claim script wrote something")
    }
}
