import Foundation
import RedisClient
import RunnerProtocol
import TestSupport
import XCTest

@testable import RunnerCore

/// Every write about a job is one script, and a script resent after a lost reply changes nothing twice.
final class ScriptIdempotencyTests: IntegrationTestCase {
    var client: RedisClient!
    var store: JobStore!
    private let retry = RedisRetry.never
    /// Runner "r" holding its lease with token "tok".
    let owner = AttemptOwner(runner: "r", leaseToken: "tok")

    override func setUpWithError() throws {
        try super.setUpWithError()
        client = RedisClient(endpoint: endpoint)
        store = JobStore(client: client, keyspace: Keyspace(namespace: namespace))
        _ = try send(["XGROUP", "CREATE", key("jobs:default"), "runners", "0", "MKSTREAM"])
        _ = try send(["SET", key("runner:r"), "tok"])
    }

    override func tearDownWithError() throws {
        client.close()
        try super.tearDownWithError()
    }

    /// Delivers the next new entry to consumer `r` and parses it.
    func deliver() throws -> (entry: JobEntry?, fields: [(String, [UInt8])], streamId: String) {
        let reply = try send(["XREADGROUP", "GROUP", "runners", "r", "COUNT", "1", "STREAMS", key("jobs:default"), ">"])
        let item = reply.array?.first?.array?[1].array?.first?.array ?? []
        let streamId = item.first?.string ?? ""
        let fields = (item.count > 1 ? item[1].fieldPairs : nil)?.map { ($0.name, $0.value) } ?? []
        return (try? JobEntry(streamId: streamId, queue: "default", fields: fields), fields, streamId)
    }

    private func count(_ type: String) throws -> Int { try events().filter { $0.type == type }.count }

    func testTheReceivedEventCarriesTheRunnersDataAndTheFencingToken() async throws {
        _ = try await store.submit(id: "r1", spec: JobSpec(command: .argv(["true"])), queue: "default")
        let entry = try XCTUnwrap(try deliver().entry)
        let data: JSONValue = [
            "queue": "default", "stream_id": .string(entry.streamId), "attempt": 1, "note": "a \"}\"",
        ]
        let claim = try await store.claim(entry: entry, owner: owner, receivedData: data, retry: retry)
        guard case .claimed(_, let fencing, _) = claim else { return XCTFail("not claimed: \(claim)") }
        let received = try XCTUnwrap(try events().first { $0.type == "job.received" })
        XCTAssertEqual(
            received.data as NSDictionary,
            [
                "queue": "default", "stream_id": entry.streamId, "attempt": 1, "note": "a \"}\"",
                "fencing_token": try XCTUnwrap(Int(fencing)),
            ] as NSDictionary)
    }

    func testAnEarlierAttemptsConditionalFieldsAreClearedWhenTheNextStarts() async throws {
        _ = try await store.submit(id: "m1", spec: JobSpec(command: .argv(["true"]), maxAttempts: 2), queue: "default")
        let first = try XCTUnwrap(try deliver().entry)
        _ = try await store.claim(entry: first, owner: owner, receivedData: [:], retry: retry)
        var failed = JobResultRecord(state: .failed, exitCode: 1, reason: "exited with code 1")
        failed.accounting = JobAccounting(
            isolation: .processGroup, requestedIsolation: .namespace, network: .host, limits: JobLimits(),
            peakMemoryBytes: 123_456, peakMemorySource: "sampled", processes: 4)
        failed.postHookExitCode = 5
        _ = try await store.failAttempt(
            entry: first, owner: owner, result: failed, failures: 1, delayMs: 0, retry: retry)
        let conditional = [
            "peak_memory_bytes", "peak_memory_source", "processes", "post_hook_exit_code",
            "isolation_requested",
        ]
        let before = try job("m1")
        XCTAssertEqual(conditional.filter { before[$0] != nil }, conditional, "\(before)")
        _ = try await store.moveDue()
        let second = try XCTUnwrap(try deliver().entry)
        guard case .claimed = try await store.claim(entry: second, owner: owner, receivedData: [:], retry: retry)
        else { return XCTFail("the second attempt was not claimed") }
        let record = try job("m1")
        XCTAssertEqual(conditional.filter { record[$0] != nil }, [], "\(record)")
    }

    func testClaimStartedRetryAndCompleteAreResendSafe() async throws {
        let spec = JobSpec(command: .argv(["true"]), maxAttempts: 2)
        _ = try await store.submit(id: "j1", spec: spec, queue: "default")
        let first = try XCTUnwrap(try deliver().entry)

        let claims = [
            try await store.claim(entry: first, owner: owner, receivedData: [:], retry: retry),
            try await store.claim(entry: first, owner: owner, receivedData: [:], retry: retry),
        ]
        XCTAssertEqual(claims[0], claims[1], "a resent claim answers the same start time and fencing token")
        guard case .claimed(_, let fencing, let failures) = claims[0] else {
            return XCTFail("not claimed: \(claims[0])")
        }
        XCTAssertEqual(failures, 0)
        XCTAssertEqual(try job("j1")["fencing_token"], fencing)
        XCTAssertEqual(try job("j1")["lease_token"], "tok")
        XCTAssertEqual(try count("job.received"), 1)
        let received = try XCTUnwrap(try events().first { $0.type == "job.received" })
        XCTAssertEqual(received.data as NSDictionary, ["fencing_token": try XCTUnwrap(Int(fencing))] as NSDictionary)

        try await store.started(entry: first, owner: owner, pid: 42, retry: retry)
        try await store.started(entry: first, owner: owner, pid: 42, retry: retry)
        XCTAssertEqual(try count("job.started"), 1)
        XCTAssertEqual(try job("j1")["pid"], "42")

        let failed = JobResultRecord(state: .failed, exitCode: 1, reason: "exited with code 1")
        for _ in 0..<2 {
            let scheduled = try await store.failAttempt(
                entry: first, owner: owner, result: failed, failures: 1, delayMs: 0, retry: retry)
            guard case .retryScheduled = scheduled else { return XCTFail("not scheduled: \(scheduled)") }
        }
        XCTAssertEqual(try count("job.retry_scheduled"), 1)
        let waiting = try job("j1")
        XCTAssertEqual(waiting["state"], "retry_scheduled")
        XCTAssertEqual(waiting["attempt"], "2")
        XCTAssertEqual(waiting["failures"], "1")
        XCTAssertEqual(waiting["requeued_from"], first.streamId)
        XCTAssertEqual(try send(["ZSCORE", key("delayed"), "j1"]).string, waiting["retry_at"])
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0, "the failed entry is acked and deleted")
        let (moved, _) = try await store.moveDue()
        let (movedAgain, next) = try await store.moveDue()
        XCTAssertEqual([moved, movedAgain], [1, 0], "a due retry moves once")
        XCTAssertNil(next)
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 1, "one new entry, not two")
        XCTAssertEqual(try job("j1")["state"], "queued")

        // The old entry is stale now: it can neither be claimed nor complete the job.
        guard case .duplicate = try await store.claim(entry: first, owner: owner, receivedData: [:], retry: retry)
        else {
            return XCTFail("the stale entry was claimed")
        }
        let second = try XCTUnwrap(try deliver().entry)
        XCTAssertEqual(second.attempt, 2)
        let staleCompletion = try await store.complete(
            entry: first, owner: owner, result: JobResultRecord(state: .succeeded), startedAtMs: nil, retry: retry)
        XCTAssertEqual(staleCompletion, .refused)

        guard
            case .claimed(_, _, let failuresBefore) = try await store.claim(
                entry: second, owner: owner, receivedData: [:], retry: retry)
        else {
            return XCTFail("the new attempt was not claimed")
        }
        XCTAssertEqual(failuresBefore, 1)
        // Another runner cannot write about this attempt, even holding a lease of its own.
        _ = try send(["SET", key("runner:other"), "tok2"])
        let foreign = try await store.complete(
            entry: second, owner: AttemptOwner(runner: "other", leaseToken: "tok2"),
            result: JobResultRecord(state: .succeeded), startedAtMs: nil, retry: retry)
        XCTAssertEqual(foreign, .refused)
        // An attempt that ended before its `started` write: `job.started` comes with the result, once.
        let done = JobResultRecord(state: .succeeded, exitCode: 0, pid: 43)
        let firstWrite = try await store.complete(
            entry: second, owner: owner, result: done, startedAtMs: nil, startedPid: 43, retry: retry)
        let resent = try await store.complete(
            entry: second, owner: owner, result: done, startedAtMs: nil, startedPid: 43, retry: retry)
        XCTAssertEqual(firstWrite, .recorded)
        XCTAssertEqual(resent, .alreadyRecorded)
        XCTAssertEqual(try count("job.succeeded"), 1)
        XCTAssertEqual(try count("job.started"), 2, "one for each attempt")
        let last = (try send(["XREVRANGE", key("events"), "+", "-", "COUNT", "2"]).array ?? []).compactMap {
            $0.array.map { strings($0[1]) }
        }
        XCTAssertEqual(last.map { $0["type"] }, ["job.succeeded", "job.started"])
        XCTAssertEqual(last.last?["data"], #"{"attempt":2,"pid":43,"queue":"default"}"#)
        XCTAssertEqual(try job("j1")["pid"], "43")
        XCTAssertEqual(try job("j1")["state"], "succeeded")
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0)
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }

    func testHandBackIsResendSafe() async throws {
        _ = try await store.submit(id: "j2", spec: JobSpec(command: .shell("sleep 1")), queue: "default")
        let entry = try XCTUnwrap(try deliver().entry)
        _ = try await store.claim(entry: entry, owner: owner, receivedData: [:], retry: retry)
        try await store.handBack(entry: entry, owner: owner, reason: "test", retry: retry)
        try await store.handBack(entry: entry, owner: owner, reason: "test", retry: retry)
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 1)
        XCTAssertEqual(try count("job.handed_back"), 1)
        XCTAssertEqual(try job("j2")["state"], "queued")
        XCTAssertEqual(try job("j2")["attempt"], "1")
    }

    func testRejectAndLostAreResendSafe() async throws {
        _ = try send(["XADD", key("jobs:default"), "*", "id", "bad", "spec", "nope"])
        let bad = try deliver()
        for _ in 0..<2 {
            try await store.reject(
                streamId: bad.streamId, queue: "default", fields: bad.fields, reason: "spec is not valid JSON",
                owner: owner, retry: retry)
        }
        XCTAssertEqual(try send(["XLEN", key("dead")]).int, 1)
        XCTAssertEqual(try count("job.rejected"), 1)

        _ = try send(["XADD", key("jobs:default"), "*", "id", "gone", "spec", #"{"argv":["true"]}"#])
        let gone = try deliver()
        _ = try send(["XDEL", key("jobs:default"), gone.streamId])
        for _ in 0..<2 {
            try await store.lost(streamId: gone.streamId, queue: "default", owner: owner, retry: retry)
        }
        XCTAssertEqual(try count("job.lost"), 1)
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }
}
