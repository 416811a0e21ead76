import Synchronization
import XCTest

@testable import RunnerCore

/// The task beside the running jobs: their deferred `started` writes and their memory samples.
final class RunningJobWatchTests: XCTestCase {
    func testAJobThatEndsBeforeTheDelayLeavesTheStartedWriteToItsResult() async {
        let writes = Atomic<Int>(0)
        let watches = RunningJobWatches(sampleInterval: .seconds(60))
        let watch = watches.start(sample: nil) { writes.add(1, ordering: .relaxed) }
        let handedOver = await watch.stop()
        XCTAssertTrue(handedOver, "stopped well within \(RunningJobWatches.startedWriteDelay)")
        // Past its delay: a job started after it is due later in the same queue, so once that one's write is sent,
        // the stopped watch's turn has passed without a write.
        let probe = Atomic<Int>(0)
        let probeWatch = watches.start(sample: nil) { probe.add(1, ordering: .relaxed) }
        let probed = await waitFor { probe.load(ordering: .relaxed) == 1 }
        XCTAssertTrue(probed, "the later job's write was not sent")
        _ = await probeWatch.stop()
        XCTAssertEqual(writes.load(ordering: .relaxed), 0)
    }

    func testAJobThatRunsOnGetsItsStartedWriteAndItsSamples() async {
        let writes = Atomic<Int>(0)
        let samples = Atomic<Int>(0)
        let watches = RunningJobWatches(sampleInterval: .milliseconds(30))
        let watch = watches.start(
            sample: { samples.add(1, ordering: .relaxed) },
            writeStarted: { writes.add(1, ordering: .relaxed) })
        _ = await waitFor { samples.load(ordering: .relaxed) >= 2 }
        XCTAssertGreaterThanOrEqual(samples.load(ordering: .relaxed), 2)
        let handedOver = await watch.stop()
        XCTAssertFalse(handedOver, "the watch wrote it")
        XCTAssertEqual(writes.load(ordering: .relaxed), 1)
        let after = samples.load(ordering: .relaxed)
        // A job started after the stop is sampled after the stopped one's next turn (the same queue, in order):
        // once it is, that turn has passed.
        let probe = Atomic<Int>(0)
        let probeWatch = watches.start(sample: { probe.add(1, ordering: .relaxed) }, writeStarted: {})
        let probed = await waitFor { probe.load(ordering: .relaxed) >= 1 }
        XCTAssertTrue(probed, "the later job was not sampled")
        _ = await probeWatch.stop()
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
        _ = await waitFor {
            let counts = samples.values
            return counts.indices.allSatisfy { !$0.isMultiple(of: 2) || counts[$0] >= 2 }
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
        _ = await waitFor { late.load(ordering: .relaxed) != 0 }
        let handedOver = await lateWatch.stop()
        XCTAssertFalse(handedOver)
        XCTAssertEqual(late.load(ordering: .relaxed), 1)
    }

    func testAStartedWriteIsNotHeldBackByAnotherJobsNextSample() async {
        let watches = RunningJobWatches(sampleInterval: .seconds(30))
        let long = Counters(1)
        let longWatch = watches.start(sample: {}, writeStarted: { long.add(0) })
        _ = await waitFor { long.values[0] != 0 }
        // The loop that samples `long` sleeps for 30 s now; a job started meanwhile gets its write after its delay.
        let began = ContinuousClock.now
        let short = Counters(1)
        let shortWatch = watches.start(sample: nil, writeStarted: { short.add(0) })
        _ = await waitFor { short.values[0] != 0 }
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
        // The write is held: stop must not return before it lands (what had landed when it returned is kept).
        let stopper = Task { (handedOver: await watch.stop(), landed: landed.load(ordering: .relaxed)) }
        // The stop has begun once the watch says it is stopped; only then is the write let go.
        let stopping = await waitFor { watch.isStopped }
        XCTAssertTrue(stopping, "stop() did not begin")
        XCTAssertFalse(landed.load(ordering: .relaxed))
        release.fire()
        let (handedOver, landedAtReturn) = await stopper.value
        XCTAssertFalse(handedOver)
        XCTAssertTrue(landedAtReturn, "stop() returned before the write landed")
        XCTAssertTrue(landed.load(ordering: .relaxed))
    }
}

/// Polls `condition` every 2 ms until it holds or 10 s pass.
private func waitFor(_ condition: () -> Bool) async -> Bool {
    let deadline = ContinuousClock.now + .seconds(10)
    while !condition() {
        if ContinuousClock.now >= deadline { return false }
        try? await Task.sleep(for: .milliseconds(2))
    }
    return true
}

private final class Counters: Sendable {
    private let counts: Mutex<[Int]>
    init(_ count: Int) { counts = Mutex([Int](repeating: 0, count: count)) }
    func add(_ index: Int) { counts.withLock { $0[index] += 1 } }
    var values: [Int] { counts.withLock { $0 } }
}
