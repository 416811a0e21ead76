import RunnerCore
import RunnerProtocol
import XCTest

@testable import RunnerCLI

final class TopViewTests: XCTestCase {
    /// 2026-12-03T16:00:00Z
    let now = 1_796_313_600_000

    func snapshot() -> PoolSnapshot {
        PoolSnapshot(
            namespace: "nr", takenAtMs: now,
            runners: [
                RunnerStatus(
                    id: "r1",
                    record: [
                        "node": "n1", "state": "running", "capacity": 4, "capacity_free": 1, "queues": ["default"],
                    ],
                    leaseRemainingMs: 12_300),
                RunnerStatus(
                    id: "r2", record: ["node": "n2", "state": "running", "capacity": 2, "capacity_free": 2],
                    leaseRemainingMs: nil),
            ],
            queues: [QueueStatus(name: "default", length: 5, pending: 3, lag: 2, consumers: 1)],
            running: [
                .init(id: "job-b", runner: "r1", queue: "default", attempt: 2, startedAtMs: now - 125_000),
                .init(
                    id: "job-a", runner: "r1", queue: "default", attempt: 1, startedAtMs: now - 1_500, cpuPercent: 50,
                    rssBytes: 3 << 20),
            ],
            // r2's figures are its last before it was lost: history, not shown.
            usage: [
                "r1": .init(cpuPercent: 37.25, memoryUsedBytes: 1 << 30, memoryTotalBytes: 4 << 30, load1: 0.5),
                "r2": .init(cpuPercent: 3, memoryUsedBytes: 1 << 29, memoryTotalBytes: 4 << 30, load1: 1.8),
            ],
            events: [
                PoolEvent(
                    streamId: "1-0", type: "job.started", timestampMs: now - 1_500, runner: "r1", job: "job-a",
                    data: "",
                    fields: [:])
            ])
    }

    /// Jobs waiting in a requirement stream are explained as `status` explains them, not left as a raw queue row.
    func testJobsWaitingForLabelsHaveTheirPaneAsInStatus() throws {
        var pool = snapshot()
        let gpu = try LabelSet(["gpu": "x"])
        pool.queues.append(
            QueueStatus(
                name: "default:req:1ee35e3a857cf4c0", length: 2, pending: 0, lag: 2, consumers: 0, requires: gpu))
        let lines = TopView.render(pool, width: 0)
        let pane = try XCTUnwrap(lines.firstIndex(of: "WAITING FOR LABELS"))
        XCTAssertEqual(lines[pane + 1], "  waiting for labels gpu=x: 2 (queue default, no running runner has them)")
        XCTAssertEqual(lines[pane - 1], "")

        // A drained runner with the labels serves nothing: named with its state, not counted (it was "1 runner(s)
        // with them"); a running one that reads the queue is.
        pool.runners.append(
            RunnerStatus(
                id: "r3", record: ["state": "drained", "queues": ["default"], "labels": ["gpu": "x"]],
                leaseRemainingMs: 9_000))
        func paneLine() -> String? {
            let lines = TopView.render(pool, width: 0)
            return lines.firstIndex(of: "WAITING FOR LABELS").map { lines[$0 + 1] }
        }
        XCTAssertEqual(
            paneLine(), "  waiting for labels gpu=x: 2 (queue default, no running runner has them; r3 drained)")
        pool.runners.append(
            RunnerStatus(
                id: "r4", record: ["state": "running", "queues": ["default"], "labels": ["gpu": "x"]],
                leaseRemainingMs: 9_000))
        XCTAssertEqual(paneLine(), "  waiting for labels gpu=x: 2 (queue default, 1 running runner(s) with them)")
    }

    func testRendersEverySection() {
        XCTAssertEqual(
            TopView.render(snapshot(), width: 0),
            [
                "NativeRunner pool 'nr'  runners 1/2 live  jobs running 2  waiting 2  retrying 0  2026-12-03T16:00:00.000Z",
                "",
                "RUNNERS",
                "  ID  NODE  STATE           LEASE    SLOTS       CPU    MEMORY     LOAD",
                "  r1  n1    running         12.3s    [###-] 3/4  37.2%  1.0G/4.0G  0.50",
                "  r2  n2    running (lost)  expired  -           -      -          -",
                "",
                "RUNNING JOBS",
                "  JOB    RUNNER  QUEUE    ATTEMPT  RUNTIME  CPU    RSS",
                "  job-b  r1      default  2        2m05s    -      -",
                "  job-a  r1      default  1        1.5s     50.0%  3.0M",
                "",
                "QUEUES",
                "  NAME     LENGTH  PENDING  LAG  CONSUMERS",
                "  default  5       3        2    1",
                "",
                "RECENT EVENTS",
                "  15:59:58.500  job.started  runner=r1  job=job-a",
            ])
    }

    /// A runner that gave its lease up to move shows LEASE `released`, not `expired` (a lost runner's).
    func testAMigratingRunnersLeaseIsReleasedNotExpired() {
        var pool = snapshot()
        for state: JSONValue in ["migrating", "migrated"] {
            var record = pool.runners[1].record.objectValue ?? [:]
            record["state"] = state
            pool.runners[1].record = .object(record)
            let row = TopView.render(pool, width: 0).first { $0.hasPrefix("  r2 ") } ?? ""
            XCTAssertEqual(
                row.split(separator: " ").prefix(4), ["r2", "n2", Substring(state.stringValue ?? ""), "released"],
                row)
        }
    }

    /// A hand-written registry record whose `capacity_free` is Int.min made `capacity - free` trap `runner status`
    /// and `runner top` (found by breaker16): its slots show `?`.
    func testSlotsThatDoNotSubtractShowAQuestionMark() {
        var pool = snapshot()
        pool.runners[1].record = ["node": "n2", "state": "migrating", "capacity_free": .int(Int.min)]
        let row = TopView.render(pool, width: 0).first { $0.hasPrefix("  r2 ") } ?? ""
        XCTAssertEqual(row.split(separator: " ").prefix(5), ["r2", "n2", "migrating", "released", "?"], row)
        XCTAssertNil(StatusCommand.slots(["capacity": 4, "capacity_free": .int(Int.min)]))
        XCTAssertEqual(
            StatusCommand.slots(["capacity": 4, "capacity_free": 1]).map { [$0.busy, $0.capacity] }, [3, 4])
    }

    /// A running job's `started_at` HSET by hand to Int.min made `now - started_at` trap `runner top` (found by
    /// breaker19): its RUNTIME shows `-`, as for a job with no start; a start after now shows 0.0s.
    func testARuntimeThatDoesNotSubtractShowsADash() throws {
        var pool = snapshot()
        pool.running = [
            .init(id: "job-min", runner: "r1", queue: "default", attempt: 1, startedAtMs: Int.min),
            .init(id: "job-max", runner: "r1", queue: "default", attempt: 1, startedAtMs: Int.max),
        ]
        let lines = TopView.render(pool, width: 0)
        let row = { (job: String) in lines.first { $0.hasPrefix("  \(job) ") }?.split(separator: " ") ?? [] }
        XCTAssertEqual(row("job-min").prefix(5), ["job-min", "r1", "default", "1", "-"], "\(lines)")
        XCTAssertEqual(row("job-max").prefix(5), ["job-max", "r1", "default", "1", "0.0s"], "\(lines)")
        XCTAssertNil(TopView.runtime(since: Int.min, now: now))
        XCTAssertEqual(TopView.runtime(since: now - 1_500, now: now), 1_500)
    }

    /// `top --events 0`: no events pane at all, not an empty one.
    func testAQueueNoRunningRunnerReadsIsListedAsNotServed() {
        func set(_ runner: Int, _ key: String, _ value: JSONValue, in pool: inout PoolSnapshot) {
            var record = pool.runners[runner].record.objectValue ?? [:]
            record[key] = value
            pool.runners[runner].record = .object(record)
        }
        var pool = snapshot()
        set(0, "state", "drained", in: &pool)
        set(1, "queues", ["default"], in: &pool)
        let lines = TopView.render(pool, width: 0, showsEvents: false)
        XCTAssertEqual(
            Array(lines.suffix(3)),
            ["", "NOT SERVED", "  not served: default: 2 waiting; no running runner reads it (r1 drained, r2 lost)"])
        // Served again once r1 runs: no such section.
        set(0, "state", "running", in: &pool)
        XCTAssertFalse(TopView.render(pool, width: 0).contains("NOT SERVED"))
    }

    /// A queue nobody has read yet has no consumer group, so Redis gives no lag: its entries still wait.
    func testWaitingCountsTheEntriesOfAQueueWithoutAConsumerGroup() {
        var pool = snapshot()
        pool.queues.append(QueueStatus(name: "nobody", length: 4, pending: 0, lag: nil, consumers: 0))
        XCTAssertTrue(TopView.render(pool, width: 0)[0].contains("jobs running 2  waiting 6  "), "\(pool.queues)")
    }

    /// Event types of different lengths: the columns after the type start at one offset on every line (the type
    /// padded to the longest shown); an event without a runner leaves its cell blank, and a column no event has is
    /// left out.
    func testTheEventColumnsAreAlignedWhateverTheTypesLengths() {
        func event(_ type: String, at ms: Int, runner: String, job: String) -> PoolEvent {
            PoolEvent(
                streamId: "\(ms)-0", type: type, timestampMs: now - ms, runner: runner, job: job, data: "", fields: [:])
        }
        var pool = snapshot()
        pool.events = [
            event("job.started", at: 3_000, runner: "r1", job: "job-a"),
            event("job.succeeded", at: 2_000, runner: "r1", job: "job-a"),
            event("runner.lost", at: 1_000, runner: "r2", job: ""),
            event("job.cancelled", at: 500, runner: "", job: "job-c"),
        ]
        let lines = TopView.render(pool, width: 0)
        XCTAssertEqual(
            Array(lines.suffix(5)),
            [
                "RECENT EVENTS",
                "  15:59:57.000  job.started    runner=r1  job=job-a",
                "  15:59:58.000  job.succeeded  runner=r1  job=job-a",
                "  15:59:59.000  runner.lost    runner=r2",
                "  15:59:59.500  job.cancelled             job=job-c",
            ])
        let offsets = Set(lines.suffix(4).compactMap { $0.range(of: "runner=")?.lowerBound.utf16Offset(in: $0) })
        XCTAssertEqual(offsets, [31])

        pool.events = [
            event("job.cancelled", at: 2_000, runner: "", job: "job-c"),
            event("job.lost", at: 1_000, runner: "", job: "job-d"),
        ]
        XCTAssertEqual(
            Array(TopView.render(pool, width: 0).suffix(2)),
            ["  15:59:58.000  job.cancelled  job=job-c", "  15:59:59.000  job.lost       job=job-d"])
    }

    func testNoEventsPaneWhenNoEventsAreAskedFor() {
        let lines = TopView.render(snapshot(), width: 0, showsEvents: false)
        XCTAssertEqual(lines, Array(TopView.render(snapshot(), width: 0).dropLast(3)))
        XCTAssertEqual(lines.last, "  default  5       3        2    1")
        XCTAssertFalse(lines.contains("RECENT EVENTS"))
    }

    func testLinesAreClippedToTheWidth() {
        let lines = TopView.render(snapshot(), width: 30)
        XCTAssertTrue(lines.allSatisfy { $0.count <= 30 }, lines.joined(separator: "\n"))
        XCTAssertEqual(lines[0], "NativeRunner pool 'nr'  runne…")
    }

    /// The figures come before the time, so that an 80-column terminal still shows them all.
    func testTheTitlesFiguresFitEightyColumns() {
        var pool = snapshot()
        pool.retriesScheduled = 3
        XCTAssertEqual(
            TopView.render(pool, width: 80)[0],
            "NativeRunner pool 'nr'  runners 1/2 live  jobs running 2  waiting 2  retrying 3…")
    }

    func testAnEmptyPoolSaysSo() {
        let empty = PoolSnapshot(
            namespace: "nr", takenAtMs: now, runners: [], queues: [], running: [], usage: [:], events: [])
        XCTAssertEqual(
            TopView.render(empty, width: 0),
            [
                "NativeRunner pool 'nr'  runners 0/0 live  jobs running 0  waiting 0  retrying 0  2026-12-03T16:00:00.000Z",
                "",
                "RUNNERS", "  (none registered in namespace 'nr')", "", "RUNNING JOBS", "  (none)", "", "QUEUES",
                "  (none)", "",
                "RECENT EVENTS", "  (none)",
            ])
    }

    func testARegistryOfTheWrongTypeCountsNoRunnersInTheTitle() {
        var snapshot = PoolSnapshot(
            namespace: "nr", takenAtMs: now, runners: [], queues: [], running: [], usage: [:], events: [])
        snapshot.wrongTypeKeys = [
            WrongTypeKey(key: Keyspace(namespace: "nr").runners, type: "string", expected: "hash")
        ]
        let lines = TopView.render(snapshot, width: 0)
        XCTAssertEqual(
            lines[0],
            "NativeRunner pool 'nr'  runners ?  jobs running 0  waiting 0  retrying 0  2026-12-03T16:00:00.000Z")
        XCTAssertEqual(lines[3], "  (cannot list the runners: key {nr}:runners is a string, expected a hash)")
    }

    func testBars() {
        XCTAssertEqual(TopView.bar(used: 0, total: 0), "[]")
        XCTAssertEqual(TopView.bar(used: 1, total: 2), "[#-]")
        XCTAssertEqual(TopView.bar(used: 1, total: 40), "[#---------]")
        XCTAssertEqual(TopView.bar(used: 40, total: 40), "[##########]")
    }
}
