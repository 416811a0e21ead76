import Foundation
import RedisClient
import RunnerProtocol
import TestSupport
import XCTest

@testable import RunnerCore

/// The reschedule script and the reaper's single-actor rule, driven directly.
final class RescheduleScriptTests: IntegrationTestCase {
    private var clients: [RedisClient] = []
    private var keyspace: Keyspace { Keyspace(namespace: namespace) }
    private let dead = AttemptOwner(runner: "dead", leaseToken: "old")

    override func tearDownWithError() throws {
        clients.forEach { $0.close() }
        clients.removeAll()
        try super.tearDownWithError()
    }

    private func makeStore() -> JobStore {
        let client = RedisClient(endpoint: endpoint)
        clients.append(client)
        return JobStore(client: client, keyspace: keyspace)
    }

    /// Submits `ids`, delivers them to consumer "dead" and claims them under its lease, which then expires.
    private func jobsOfADeadRunner(_ ids: [String], store: JobStore) async throws -> [JobEntry] {
        _ = try send(["XGROUP", "CREATE", key("jobs:default"), "runners", "0", "MKSTREAM"])
        for id in ids { _ = try await store.submit(id: id, spec: JobSpec(command: .argv(["true"])), queue: "default") }
        _ = try send(["SET", key("runner:dead"), "old"])
        let read = try send([
            "XREADGROUP", "GROUP", "runners", "dead", "COUNT", "1000", "STREAMS", key("jobs:default"), ">",
        ])
        var entries: [JobEntry] = []
        for item in read.array?.first?.array?[1].array ?? [] {
            let parts = item.array ?? []
            let fields = (parts[1].fieldPairs ?? []).map { ($0.name, $0.value) }
            let entry = try JobEntry(streamId: parts[0].string ?? "", queue: "default", fields: fields)
            let claim = try await store.claim(entry: entry, owner: dead, receivedData: [:], retry: .never)
            guard case .claimed = claim else {
                XCTFail("claim of \(entry.jobId): \(claim)")
                return []
            }
            entries.append(entry)
        }
        _ = try send(["DEL", key("runner:dead")])
        return entries
    }

    func testTwoReapersRacingRequeueEveryJobExactlyOnce() async throws {
        let ids = (1...30).map { "race-\($0)" }
        let entries = try await jobsOfADeadRunner(ids, store: makeStore())
        let racers = [makeStore(), makeStore()]
        let outcomes = await withTaskGroup(of: [Rescheduled].self) { group in
            for store in racers {
                group.addTask {
                    var outcomes: [Rescheduled] = []
                    for entry in entries {
                        outcomes.append(
                            (try? await store.reschedule(
                                streamId: entry.streamId, queue: "default", consumer: "dead", reason: .leaseExpired,
                                actor: "reaper", bound: 3)) ?? .notPending)
                    }
                    return outcomes
                }
            }
            var all: [Rescheduled] = []
            for await part in group { all += part }
            return all
        }
        XCTAssertEqual(outcomes.filter { if case .requeued = $0 { return true } else { return false } }.count, 30)
        XCTAssertEqual(outcomes.filter { $0 == .notPending }.count, 30)
        XCTAssertEqual(try events().filter { $0.type == "job.rescheduled" }.count, 30)
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 30, "one new entry per job")
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
        for id in ids {
            let record = try job(id)
            XCTAssertEqual(record["state"], "queued", id)
            XCTAssertEqual(record["attempt"], "2", id)
            XCTAssertEqual(record["reschedules"], "1", id)
            XCTAssertNil(record["lease_token"], id)
        }
        // The dead runner's late result is refused.
        let late = try await makeStore().complete(
            entry: entries[0], owner: dead, result: JobResultRecord(state: .succeeded), startedAtMs: nil,
            retry: .never)
        XCTAssertEqual(late, .refused)
        XCTAssertEqual(try events().filter { $0.type == "job.stale_result" }.count, 1)
    }

    func testOnlyOneReaperLeads() async throws {
        let configuration = ReaperConfiguration(redis: endpoint, keyspace: keyspace, name: "a", interval: .seconds(1))
        var second = configuration
        second.name = "b"
        let reapers = [
            Reaper(configuration: configuration, logger: Logger(label: "a", level: .error)),
            Reaper(configuration: second, logger: Logger(label: "b", level: .error)),
        ]
        let led = await withTaskGroup(of: Bool.self) { group in
            for reaper in reapers { group.addTask { (try? await reaper.pass()) != nil } }
            var count = 0
            for await leads in group where leads { count += 1 }
            return count
        }
        XCTAssertEqual(led, 1, "exactly one reaper acts")
        for reaper in reapers { await reaper.resign() }
        XCTAssertEqual(try send(["EXISTS", key("reaper")]).int, 0, "the leader gives its lease up")
    }

    func testLiveOwnerStaleDuplicateAndLostPayload() async throws {
        let store = makeStore()
        let entries = try await jobsOfADeadRunner(["alive-1", "done-1", "gone-1"], store: store)
        // alive-1: pending for "dead" but its record is run by a live runner's current epoch.
        _ = try send(["SET", key("runner:live"), "tok"])
        _ = try send(["HSET", key("job:alive-1"), "runner", "live", "lease_token", "tok"])
        // done-1: its record has ended already.
        _ = try send(["HSET", key("job:done-1"), "state", "succeeded"])
        // gone-1: its payload was deleted while pending.
        _ = try send(["XDEL", key("jobs:default"), entries[2].streamId])
        func reschedule(_ entry: JobEntry) async throws -> Rescheduled {
            try await store.reschedule(
                streamId: entry.streamId, queue: "default", consumer: "dead", reason: .leaseExpired, actor: "reaper",
                bound: 3)
        }
        let alive = try await reschedule(entries[0])
        XCTAssertEqual(alive, .ownerAlive)
        let stale = try await reschedule(entries[1])
        XCTAssertEqual(stale, .stale)
        let lost = try await reschedule(entries[2])
        XCTAssertEqual(lost, .lost)
        XCTAssertEqual(
            try events().filter { $0.type == "job.lost" }.first?.data["stream_id"] as? String, entries[2].streamId)
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 1, "only alive-1")
        XCTAssertEqual(try job("done-1")["state"], "succeeded")
        // Once the live runner's lease is gone too, alive-1 is rescheduled.
        _ = try send(["DEL", key("runner:live")])
        guard case .requeued = try await reschedule(entries[0]) else { return XCTFail("not rescheduled") }
        XCTAssertEqual(try events().first { $0.type == "job.rescheduled" }?.data["from_runner"] as? String, "live")
    }

    func testAJobRescheduledPastTheBoundIsDead() async throws {
        let store = makeStore()
        var entry = try await jobsOfADeadRunner(["poison-1"], store: store)[0]
        for round in 1...3 {
            let outcome = try await store.reschedule(
                streamId: entry.streamId, queue: "default", consumer: "dead", reason: .leaseExpired, actor: "reaper",
                bound: 2)
            if round == 3 {
                guard case .dead = outcome else { return XCTFail("round 3: \(outcome)") }
                break
            }
            guard case .requeued(let streamId) = outcome else { return XCTFail("round \(round): \(outcome)") }
            // The next runner takes it and dies too.
            _ = try send(["SET", key("runner:dead"), "old"])
            let read = try send([
                "XREADGROUP", "GROUP", "runners", "dead", "COUNT", "1", "STREAMS", key("jobs:default"), ">",
            ])
            let parts = read.array?.first?.array?[1].array?.first?.array ?? []
            XCTAssertEqual(parts.first?.string, streamId)
            entry = try JobEntry(
                streamId: streamId, queue: "default", fields: (parts[1].fieldPairs ?? []).map { ($0.name, $0.value) })
            guard case .claimed = try await store.claim(entry: entry, owner: dead, receivedData: [:], retry: .never)
            else { return XCTFail("claim") }
            _ = try send(["DEL", key("runner:dead")])
        }
        let record = try job("poison-1")
        XCTAssertEqual(record["state"], "dead")
        XCTAssertEqual(record["reschedules"], "2")
        XCTAssertTrue(
            record["reason"]?.hasPrefix("lost with its runner 3 times, more than the bound of 2 reschedules") == true,
            record["reason"] ?? "")
        XCTAssertEqual(try events().filter { $0.type == "job.dead" }.count, 1)
        let letter = strings(try send(["XRANGE", key("dead"), "-", "+"]).array?.first?.array?[1] ?? .null)
        XCTAssertEqual(letter["id"], "poison-1")
        XCTAssertEqual(letter["reason"], record["reason"])
        XCTAssertEqual(try send(["XLEN", key("jobs:default")]).int, 0)
        XCTAssertEqual(try send(["XPENDING", key("jobs:default"), "runners"]).array?.first?.int, 0)
    }

    func testAReaperMarksIdleDeadRunnersLostOnceAndForgetsThemAfterTheRetention() async throws {
        _ = try send(["HSET", key("runners"), "gone", #"{"node":"n1","pid":7,"queues":["default"],"state":"running"}"#])
        _ = try send(["SET", key("runner:alive"), "tok"])
        _ = try send(["HSET", key("runners"), "alive", #"{"state":"running"}"#])
        var configuration = ReaperConfiguration(redis: endpoint, keyspace: keyspace, name: "reaper")
        configuration.lostRetention = .seconds(3600)
        let reaper = Reaper(configuration: configuration, logger: Logger(label: "t", level: .error))
        let first = try await reaper.pass()
        XCTAssertEqual(first?.runnersLost, 1)
        let second = try await reaper.pass()
        XCTAssertEqual(second?.runnersLost, 0, "runner.lost is emitted once")
        let lost = try events().filter { $0.type == "runner.lost" }
        XCTAssertEqual(lost.map(\.runner), ["gone"])
        XCTAssertEqual(lost.first?.data["last_state"] as? String, "running")
        XCTAssertEqual(lost.first?.data["node"] as? String, "n1")
        let record = try JSONSerialization.jsonObject(with: Data((try hash(key("runners"))["gone"] ?? "").utf8))
        XCTAssertEqual((record as? [String: Any])?["state"] as? String, "lost")
        XCTAssertEqual(strings(try send(["HGETALL", key("runners")])).keys.sorted(), ["alive", "gone"])

        configuration.lostRetention = .zero
        let impatient = Reaper(configuration: configuration, logger: Logger(label: "t", level: .error))
        await reaper.resign()
        let third = try await impatient.pass()
        XCTAssertEqual(third?.recordsForgotten, 1)
        XCTAssertEqual(strings(try send(["HGETALL", key("runners")])).keys.sorted(), ["alive"])
        await impatient.resign()
    }
}
