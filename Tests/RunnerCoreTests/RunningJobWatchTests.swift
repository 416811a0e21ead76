import Synchronization
import XCTest

@testable import RunnerCore

/// The task beside the running jobs: their deferred `started` writes and their memory samples.
final class RunningJobWatchTests: XCTestCase {
    func testAJobThatEndsBeforeTheDelayLeavesTheStartedWriteToItsResult() async {
        let writes = Atomic<Int>(0)
        let watch = RunningJobWatches(sampleInterval: .seconds(60)).start(sample: nil) {
            writes.add(1, ordering: .relaxed)
        }
        let handedOver = await watch.stop()
        XCTAssertTrue(handedOver, "stopped well within \(RunningJobWatches.startedWriteDelay)")
        // Past the delay: the stopped watch never writes.
        try? await Task.sleep(for: RunningJobWatches.startedWriteDelay * 5)
        XCTAssertEqual(writes.load(ordering: .relaxed), 0)
    }

    func testAJobThatRunsOnGetsItsStartedWriteAndItsSamples() async {
        let writes = Atomic<Int>(0)
        let samples = Atomic<Int>(0)
        let watch = RunningJobWatches(sampleInterval: .milliseconds(30)).start(
            sample: { samples.add(1, ordering: .relaxed) },
            writeStarted: { writes.add(1, ordering: .relaxed) })
        let deadline = ContinuousClock.now + .seconds(10)
        while samples.load(ordering: .relaxed) < 2, ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        XCTAssertGreaterThanOrEqual(samples.load(ordering: .relaxed), 2)
        let handedOver = await watch.stop()
        XCTAssertFalse(handedOver, "the watch wrote it")
        XCTAssertEqual(writes.load(ordering: .relaxed), 1)
        let after = samples.load(ordering: .relaxed)
        try? await Task.sleep(for: .milliseconds(100))
        XCTAssertEqual(samples.load(ordering: .relaxed), after, "no sample after stop")
    }

    func testOneLoopServesManyJobsEachOnceAndEndsWhenTheyStop() async {
        let watches = RunningJobWatches(sampleInterval: .milliseconds(20))
        let writes = Counters(20)
        let samples = Counters(20)
        var running: [RunningJobWatch] = []
        for index in 0..<20 {
            let sample: (@Sendable () -> Void)? = index.isMultiple(of: 2) ? { @Sendable in samples.add(index) } : nil
            running.append(watches.start(sample: sample, writeStarted: { writes.add(index) }))
        }
        let deadline = ContinuousClock.now + .seconds(10)
        func sampledTwice() -> Bool {
            let counts = samples.values
            return counts.indices.allSatisfy { !$0.isMultiple(of: 2) || counts[$0] >= 2 }
        }
        while !sampledTwice(), ContinuousClock.now < deadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        for watch in running { _ = await watch.stop() }
        XCTAssertEqual(writes.values, Array(repeating: 1, count: 20))
        let counts = samples.values
        for (index, count) in counts.enumerated() {
            if index.isMultiple(of: 2) {
                XCTAssertGreaterThanOrEqual(count, 2, "job \(index)")
            } else {
                XCTAssertEqual(count, 0, "job \(index) has a cgroup: no samples")
            }
        }
        // A job started after the loop ended gets a new one.
        let late = Atomic<Int>(0)
        let lateWatch = watches.start(sample: nil) { late.add(1, ordering: .relaxed) }
        let lateDeadline = ContinuousClock.now + .seconds(10)
        while late.load(ordering: .relaxed) == 0, ContinuousClock.now < lateDeadline {
            try? await Task.sleep(for: .milliseconds(5))
        }
        let handedOver = await lateWatch.stop()
        XCTAssertFalse(handedOver)
        XCTAssertEqual(late.load(ordering: .relaxed), 1)
    }

    func testAStartedWriteIsNotHeldBackByAnotherJobsNextSample() async {
        let watches = RunningJobWatches(sampleInterval: .seconds(30))
        let long = Counters(1)
        let longWatch = watches.start(sample: {}, writeStarted: { long.add(0) })
        let deadline = ContinuousClock.now + .seconds(10)
        while long.values[0] == 0, ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(2)) }
        // The loop that samples `long` sleeps for 30 s now; a job started meanwhile gets its write after its delay.
        let began = ContinuousClock.now
        let short = Counters(1)
        let shortWatch = watches.start(sample: nil, writeStarted: { short.add(0) })
        while short.values[0] == 0, ContinuousClock.now - began < .seconds(10) {
            try? await Task.sleep(for: .milliseconds(2))
        }
        XCTAssertEqual(short.values, [1])
        XCTAssertLessThan(ContinuousClock.now - began, .seconds(5), "not held until the next sample")
        _ = await shortWatch.stop()
        _ = await longWatch.stop()
    }

    func testACancelSendsTheStartedWriteAtOnce() async {
        let writes = Counters(1)
        let watch = RunningJobWatches(sampleInterval: .seconds(60)).start(sample: nil) { writes.add(0) }
        await watch.writeStartedNow()
        XCTAssertEqual(writes.values, [1], "written before the cancel phases")
        await watch.writeStartedNow()
        XCTAssertEqual(writes.values, [1], "once")
        let handedOver = await watch.stop()
        XCTAssertFalse(handedOver)
    }

    func testStopWaitsForAStartedWriteInFlight() async {
        let release = Latch()
        let sent = Latch()
        let landed = Atomic<Bool>(false)
        let watch = RunningJobWatches(sampleInterval: .seconds(60)).start(sample: nil) {
            sent.fire()
            await release.wait()
            landed.store(true, ordering: .relaxed)
        }
        await sent.wait()
        let stopper = Task { await watch.stop() }
        // The write is held: stop must not return before it lands.
        try? await Task.sleep(for: .milliseconds(50))
        XCTAssertFalse(landed.load(ordering: .relaxed))
        release.fire()
        let handedOver = await stopper.value
        XCTAssertFalse(handedOver)
        XCTAssertTrue(landed.load(ordering: .relaxed))
    }
}

private final class Counters: Sendable {
    private let counts: Mutex<[Int]>
    init(_ count: Int) { counts = Mutex([Int](repeating: 0, count: count)) }
    func add(_ index: Int) { counts.withLock { $0[index] += 1 } }
    var values: [Int] { counts.withLock { $0 } }
}
