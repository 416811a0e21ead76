import Foundation
import ProcessSupervision
import TestSupport
import XCTest

final class ResourceSamplerTests: XCTestCase {
    private var procRoot = ""

    override func setUpWithError() throws {
        procRoot = try makeTemporaryDirectory()
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: procRoot)
    }

    private func plant(_ path: String, _ content: String) throws {
        let full = procRoot + "/" + path
        try FileManager.default.createDirectory(
            atPath: (full as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        try content.write(toFile: full, atomically: false, encoding: .utf8)
    }

    /// A /proc/<pid>/stat line: comm with a space and parentheses, then state, ppid, pgrp, session, ..., utime (14),
    /// stime (15), cutime (16), cstime (17), ...
    private func statLine(pid: Int32, group: Int32, session: Int32, user: Int, system: Int, childUser: Int = 0)
        -> String
    {
        "\(pid) (my (odd) job) S 1 \(group) \(session) 0 -1 4194304 100 0 0 0 \(user) \(system) \(childUser) 0 20 0 1 0 "
            + "12345 10000000 250 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n"
    }

    private var ticksPerSecond: Int { sysconf(Int32(_SC_CLK_TCK)) }
    private var pageSize: UInt64 { UInt64(sysconf(Int32(_SC_PAGESIZE))) }

    func testHostCPUPercentBetweenTwoSamples() throws {
        let sampler = ResourceSampler(procRoot: procRoot)
        try plant("stat", "cpu  100 5 50 800 20 3 2 1 0 0\ncpu0 50 2 25 400 10 1 1 0 0 0\nintr 12345\n")
        let first = try sampler.hostCPUTimes()
        XCTAssertEqual(first, HostCPUTimes(busyTicks: 161, idleTicks: 820))
        try plant("stat", "cpu  170 5 80 880 40 3 2 1 0 0\n")
        let second = try sampler.hostCPUTimes()

        XCTAssertEqual(try XCTUnwrap(second.busyPercent(since: first)), 50, accuracy: 1e-9)  // 100 busy of 200
        XCTAssertNil(second.busyPercent(since: second), "no tick passed")
        XCTAssertNil(first.busyPercent(since: second), "counters that went backwards say nothing")
    }

    func testLoadAverageAndMemory() throws {
        let sampler = ResourceSampler(procRoot: procRoot)
        try plant("loadavg", "0.52 1.58 2.59 2/345 12345\n")
        try plant(
            "meminfo",
            "MemTotal:       16384000 kB\nMemFree:         1000000 kB\nMemAvailable:    4096000 kB\nHugePages_Total:       0\n"
        )

        XCTAssertEqual(try sampler.loadAverage(), LoadAverage(oneMinute: 0.52, fiveMinutes: 1.58, fifteenMinutes: 2.59))
        let memory = try sampler.memory()
        XCTAssertEqual(memory, HostMemory(totalBytes: 16_384_000 * 1024, availableBytes: 4_096_000 * 1024))
        XCTAssertEqual(memory.usedBytes, 12_288_000 * 1024)
    }

    func testMissingAndMalformedFilesAreTypedErrorsNamingTheFile() throws {
        let sampler = ResourceSampler(procRoot: procRoot)
        XCTAssertThrowsError(try sampler.loadAverage()) {
            XCTAssertEqual(($0 as? ResourceSampleError)?.errno, ENOENT)
            XCTAssertEqual(($0 as? ResourceSampleError)?.path, procRoot + "/loadavg")
        }
        try plant("meminfo", "MemTotal: 1000 kB\n")
        XCTAssertThrowsError(try sampler.memory()) {
            XCTAssertEqual(
                ($0 as? ResourceSampleError)?.message,
                "unexpected content in \(procRoot)/meminfo: expected MemTotal and MemAvailable")
        }
        try plant("stat", "intr 1\n")
        XCTAssertThrowsError(try sampler.hostCPUTimes()) {
            XCTAssertEqual(($0 as? ResourceSampleError)?.path, procRoot + "/stat")
        }
    }

    func testTreeUsageBySessionGroupAndPids() throws {
        let sampler = ResourceSampler(procRoot: procRoot)
        try plant("100/stat", statLine(pid: 100, group: 100, session: 100, user: 150, system: 50, childUser: 25))
        try plant("100/statm", "5000 300 100 10 0 200 0\n")
        try plant("101/stat", statLine(pid: 101, group: 101, session: 100, user: 10, system: 5))
        try plant("101/statm", "2000 200 50 10 0 100 0\n")
        try plant("200/stat", statLine(pid: 200, group: 200, session: 200, user: 999, system: 999))
        try plant("200/statm", "9000 900 50 10 0 100 0\n")
        try plant("self/stat", "not a pid directory\n")
        let tick = Duration.seconds(1) / ticksPerSecond

        let session = sampler.treeUsage(.session(100))
        XCTAssertEqual(
            session,
            ProcessTreeUsage(
                pids: [100, 101], userCPUTime: tick * (150 + 25 + 10), systemCPUTime: tick * (50 + 5),
                residentBytes: 500 * pageSize))
        XCTAssertEqual(sampler.treeUsage(.processGroup(101)).pids, [101])
        // Listed pids that are gone are left out.
        XCTAssertEqual(sampler.treeUsage(.pids([200, 300])).pids, [200])
        XCTAssertEqual(
            sampler.treeUsage(.session(4242)),
            ProcessTreeUsage(pids: [], userCPUTime: .zero, systemCPUTime: .zero, residentBytes: 0))

        var peak = PeakResidentTracker()
        peak.record(session)
        try plant("101/statm", "2000 50 50 10 0 100 0\n")
        peak.record(sampler.treeUsage(.session(100)))
        XCTAssertEqual(peak.peakBytes, 500 * pageSize, "the peak keeps the larger sample")
    }

    func testPeakResidentOfAProcessFromVmHWM() throws {
        let sampler = ResourceSampler(procRoot: procRoot)
        try plant("100/status", "Name:\tjob\nVmPeak:\t  20000 kB\nVmHWM:\t    7340 kB\nVmRSS:\t    5000 kB\n")

        XCTAssertEqual(sampler.peakResidentBytes(of: 100), 7340 * 1024)
        XCTAssertNil(sampler.peakResidentBytes(of: 101))
    }

    func testTheVmHWMLineIsFoundAndReadExactly() throws {
        let sampler = ResourceSampler(procRoot: procRoot)
        var pid: Int32 = 200
        func field(_ text: String) throws -> UInt64? {
            pid += 1
            try plant("\(pid)/status", text)
            return sampler.peakResidentBytes(of: pid)
        }
        XCTAssertEqual(try field("VmHWMX:\t9 kB\nVmHWM:\t 12 kB"), 12 * 1024, "the last line needs no newline")
        XCTAssertEqual(try field("VmHWM: 12"), 12, "a figure without a unit is taken as it is")
        XCTAssertEqual(try field("VmHWM:\t12 pages\n"), 12)
        XCTAssertNil(try field("XVmHWM: 12 kB\nVmHWMs: 3 kB\n"), "only the whole name counts")
        XCTAssertNil(try field("VmHWM: 12x kB\n"))
        XCTAssertNil(try field("VmHWM:\n"))
        XCTAssertNil(try field("VmHWM: 99999999999999999999 kB\n"), "too large for 64 bits")
        XCTAssertNil(try field("VmHWM: 18014398509481984 kB\n"), "too large once in bytes")
        XCTAssertNil(try field(""))
    }

    func testThisHostsFiguresAndARealJobTree() async throws {
        let sampler = ResourceSampler()
        let memory = try sampler.memory()
        XCTAssertGreaterThan(memory.totalBytes, 0)
        XCTAssertLessThanOrEqual(memory.availableBytes, memory.totalBytes)
        XCTAssertGreaterThanOrEqual(try sampler.loadAverage().oneMinute, 0)
        let disk = try sampler.diskSpace(of: NSTemporaryDirectory())
        XCTAssertGreaterThan(disk.totalBytes, 0)
        XCTAssertLessThanOrEqual(disk.availableBytes, disk.totalBytes)
        XCTAssertThrowsError(try sampler.diskSpace(of: "/no/such/folder")) {
            XCTAssertEqual(($0 as? ResourceSampleError)?.errno, ENOENT)
        }
        let before = try sampler.hostCPUTimes()

        // A job of three processes in its own session, one of them busy.
        let process = try await Shared.supervisor.spawn(shell("sleep 60 & while :; do :; done & wait")) { _, _ in }
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { sampler.treeUsage(.session(process.pid)).pids.count == 3 })
        XCTAssertTrue(
            waitUntil(timeout: .seconds(10)) {
                sampler.treeUsage(.session(process.pid)).userCPUTime >= .milliseconds(100)
            }, "the busy loop's CPU time is counted")
        let tree = sampler.treeUsage(.session(process.pid))
        XCTAssertEqual(tree.pids.first, process.pid)
        XCTAssertGreaterThan(tree.residentBytes, 0)
        XCTAssertEqual(sampler.treeUsage(.processGroup(process.pid)).pids, tree.pids)
        XCTAssertGreaterThan(sampler.peakResidentBytes(of: process.pid) ?? 0, 0)
        XCTAssertNotNil(try sampler.hostCPUTimes().busyPercent(since: before))

        process.signalGroup(SIGKILL)
        _ = await process.wait(TerminationPolicy(killGrace: .zero))
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { sampler.treeUsage(.session(process.pid)).pids.isEmpty })
    }
}
