import Foundation
import ProcessSupervision
import TestSupport
import XCTest

/// The v1 driver on this host's real cgroup v1 hierarchies (needs root and v1 memory, pids, cpu, cpuacct, freezer).
final class CgroupV1DriverTests: XCTestCase {
    private var driver: CgroupV1Driver!
    private var legacy: [CgroupV1Hierarchy] = []
    private let parentName = uniqueCgroupParentName()
    private var mounts: [String: String] = [:]

    override func setUp() async throws {
        guard getuid() == 0 else { throw XCTSkip("cgroup v1 tests need root to create cgroups") }
        switch try CgroupHierarchy.detect() {
        case .legacy(let hierarchies), .hybrid(let hierarchies, _): legacy = hierarchies
        case .unified: throw XCTSkip("this host has no cgroup v1 hierarchies (unified cgroup v2 only)")
        }
        for controller in CgroupV1Driver.usedControllers {
            guard let hierarchy = legacy.first(where: { $0.controllers.contains(controller) }) else {
                throw XCTSkip("the cgroup v1 \(controller) controller is not mounted here")
            }
            mounts[controller] = hierarchy.mountPoint
        }
        driver = CgroupV1Driver(hierarchies: legacy, parent: .belowOwnCgroup(parentName))
        _ = try driver.prepareParent()
    }

    override func tearDown() async throws {
        if let driver { await removeEverything(under: driver) }
        for directory in driver?.parentDirectories ?? [] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: directory), "\(directory) left behind")
        }
    }

    /// The job's directory in the hierarchy of `controller`.
    private func directory(_ job: JobCgroup, _ controller: String) throws -> String {
        let mount = try XCTUnwrap(mounts[controller])
        return try XCTUnwrap(job.directories.first { $0.hasPrefix(mount + "/") }, "no \(controller) directory")
    }

    func testLimitsAreWrittenToEveryHierarchy() throws {
        let limits = CgroupLimits(memoryBytes: 64 << 20, pids: 32, cpuMillis: 500, cpuWeight: 200)
        let job = try driver.create(name: "job-limits", limits: limits)

        let memory = try directory(job, "memory")
        XCTAssertEqual(cgroupValue(memory, "memory.limit_in_bytes"), "67108864")
        if FileManager.default.fileExists(atPath: memory + "/memory.memsw.limit_in_bytes") {
            XCTAssertEqual(cgroupValue(memory, "memory.memsw.limit_in_bytes"), "67108864")
        }
        XCTAssertEqual(cgroupValue(try directory(job, "pids"), "pids.max"), "32")
        let cpu = try directory(job, "cpu")
        XCTAssertEqual(cgroupValue(cpu, "cpu.cfs_period_us"), "100000")
        XCTAssertEqual(cgroupValue(cpu, "cpu.cfs_quota_us"), "50000")
        XCTAssertEqual(cgroupValue(cpu, "cpu.shares"), "2048")
        XCTAssertEqual(cgroupValue(try directory(job, "freezer"), "freezer.state"), "THAWED")
        XCTAssertEqual(try driver.usage(job).memoryLimitBytes, 64 << 20)
        // One cgroup.procs per hierarchy, and each is a real file.
        XCTAssertEqual(driver.procsFiles(job).count, Set(mounts.values).count)
        for file in driver.procsFiles(job) { XCTAssertTrue(FileManager.default.fileExists(atPath: file), file) }
    }

    func testKillEmptiesTheCgroupAndRemoveDeletesEveryDirectory() async throws {
        let job = try driver.create(name: "job-kill", limits: CgroupLimits(pids: 64))
        // setsid leaves the job's session and process group, but not its cgroup.
        let process = try await spawnInCgroup(
            driver.procsFiles(job), "sleep 60 & sleep 60 & setsid sleep 60 & wait")
        let pidsDirectory = try directory(job, "pids")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(5)) { cgroupMembers(ofProcsFile: pidsDirectory + "/cgroup.procs").count == 4 })
        let members = cgroupMembers(ofProcsFile: pidsDirectory + "/cgroup.procs")
        for file in driver.procsFiles(job) {
            XCTAssertEqual(Set(cgroupMembers(ofProcsFile: file)), Set(members), "every hierarchy has the same members")
        }
        let usage = try driver.usage(job)
        XCTAssertEqual(usage.pidsCurrent, 4)
        XCTAssertGreaterThan(usage.memoryCurrentBytes ?? 0, 0)
        XCTAssertNotNil(usage.totalCPUTime)
        XCTAssertEqual(usage.oomKillCount, 0)

        try await driver.kill(job, deadline: .now + .seconds(5))

        for file in driver.procsFiles(job) { XCTAssertEqual(cgroupMembers(ofProcsFile: file), [], file) }
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !members.contains(where: processIsAlive) })
        XCTAssertEqual(cgroupValue(try directory(job, "freezer"), "freezer.state"), "THAWED")
        let outcome = await process.wait(TerminationPolicy(killGrace: .zero))
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))

        try await driver.remove(job, deadline: .now + .seconds(5))
        for directory in job.directories {
            XCTAssertFalse(FileManager.default.fileExists(atPath: directory), directory)
        }
        XCTAssertEqual(try driver.jobCgroups(namePrefix: ""), [])
    }

    func testAMemoryHogIsOOMKilledAndTheCountersSaySo() async throws {
        let limit: UInt64 = 64 << 20
        let job = try driver.create(name: "job-hog", limits: CgroupLimits(memoryBytes: limit))
        // tail keeps the one endless line of /dev/zero in memory: 200 MiB wanted, 64 MiB allowed.
        let process = try await spawnInCgroup(driver.procsFiles(job), "head -c 200M /dev/zero | tail")
        let outcome = await process.wait(TerminationPolicy(timeout: .seconds(30)))

        XCTAssertEqual(outcome.termination, .exited(128 + SIGKILL), "the shell reports tail killed by SIGKILL")
        let usage = try driver.usage(job)
        XCTAssertTrue(usage.wasOOMKilled)
        XCTAssertGreaterThanOrEqual(usage.oomKillCount ?? 0, 1)
        XCTAssertEqual(usage.memoryLimitBytes, limit)
        let peak = try XCTUnwrap(usage.memoryPeakBytes)
        XCTAssertGreaterThan(peak, limit / 2)
        XCTAssertLessThanOrEqual(peak, limit)
    }

    func testAJobThatKillsItselfWithSIGKILLIsNotOOM() async throws {
        let job = try driver.create(name: "job-self-kill", limits: CgroupLimits(memoryBytes: 64 << 20))
        // The job may be gone before anyone sees it in the cgroup; it got to `kill` only after joining (else exit 125).
        let process = try await spawnInCgroup(driver.procsFiles(job), "kill -9 $$", waitUntilJoined: false)
        let outcome = await process.wait(TerminationPolicy(timeout: .seconds(30)))

        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        let usage = try driver.usage(job)
        XCTAssertEqual(usage.oomKillCount, 0)
        XCTAssertFalse(usage.wasOOMKilled)
    }

    func testAForkBombStopsAtThePidsLimit() async throws {
        let job = try driver.create(name: "job-fork-bomb", limits: CgroupLimits(pids: 16))
        // The shell may give up before anyone sees it in the cgroup: its sleeps stay and are counted.
        let process = try await spawnInCgroup(
            driver.procsFiles(job), "while :; do sleep 10 & done", waitUntilJoined: false)

        XCTAssertTrue(waitUntil(timeout: .seconds(10)) { ((try? self.driver.usage(job).pidsLimitHits) ?? 0) >= 1 })
        let usage = try driver.usage(job)
        XCTAssertLessThanOrEqual(usage.pidsCurrent ?? .max, 16)
        XCTAssertLessThanOrEqual(usage.pidsPeak ?? 0, 16)
        try await driver.kill(job, deadline: .now + .seconds(5))
        let outcome = await process.wait(TerminationPolicy(killGrace: .zero))
        // dash gives up with "Cannot fork" (exit 2) once fork fails, unless the kill came first.
        XCTAssertTrue([.exited(2), .signaled(SIGKILL)].contains(outcome.termination), "\(outcome.termination)")
        for file in driver.procsFiles(job) { XCTAssertEqual(cgroupMembers(ofProcsFile: file), [], file) }
    }

    func testACPUQuotaOf500MillicoresHoldsBusyLoopsToHalfACore() async throws {
        // Weight 1000 (10240 shares) so that the other builds sharing this host cannot push the job below its quota.
        let job = try driver.create(name: "job-cpu", limits: CgroupLimits(cpuMillis: 500, cpuWeight: 1000))
        // Two busy loops want two cores; the quota allows half of one.
        let process = try await spawnInCgroup(
            driver.procsFiles(job), "while :; do :; done & while :; do :; done & wait")
        let cpuacct = try directory(job, "cpuacct")
        XCTAssertTrue(
            waitUntil(timeout: .seconds(5)) { cgroupMembers(ofProcsFile: cpuacct + "/cgroup.procs").count == 3 })

        let before = try XCTUnwrap(try driver.usage(job).totalCPUTime)
        let start = ContinuousClock.now
        try await Task.sleep(for: .milliseconds(1500))  // the measuring window, not a wait for a condition
        let after = try XCTUnwrap(try driver.usage(job).totalCPUTime)
        let wall = ContinuousClock.now - start

        let share = (after - before).seconds / wall.seconds
        XCTAssertGreaterThan(share, 0.3, "cgroup CPU \(after - before) over \(wall)")
        XCTAssertLessThan(share, 0.7, "cgroup CPU \(after - before) over \(wall)")
        // nr_periods advances only under a CFS quota. (Throttling itself depends on how busy the shared host is.)
        XCTAssertGreaterThan(try driver.usage(job).cpuPeriods ?? 0, 0)
        try await driver.kill(job, deadline: .now + .seconds(5))
        _ = await process.wait(TerminationPolicy(killGrace: .zero))
    }

    func testALeftoverCgroupIsListedAndCleanedUpByANewDriver() async throws {
        let job = try driver.create(name: "job-leftover", limits: CgroupLimits())
        _ = try driver.create(name: "unrelated", limits: CgroupLimits())
        let process = try await spawnInCgroup(driver.procsFiles(job), "sleep 60")

        // A restarted runner: a fresh driver for the same parent.
        let restarted = CgroupV1Driver(hierarchies: legacy, parent: .belowOwnCgroup(parentName))
        let orphans = try restarted.jobCgroups(namePrefix: "job-")
        XCTAssertEqual(orphans, [job])

        try await restarted.killAndRemove(orphans[0], deadline: .now + .seconds(5))

        let outcome = await process.wait(TerminationPolicy(killGrace: .zero))
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        XCTAssertEqual(try restarted.jobCgroups(namePrefix: "job-"), [])
        XCTAssertEqual(try restarted.jobCgroups(namePrefix: "").map(\.name), ["unrelated"])
    }

    /// Another runner's parent beside this driver's, with a job running in it: found by name, its members read
    /// through a driver for it, and killed and removed whole in every hierarchy, its freezer thawed.
    func testASiblingParentIsFoundAndRemovedWithItsRunningJob() async throws {
        let siblingName = parentName + "-other"
        let other = CgroupV1Driver(hierarchies: legacy, parent: .belowOwnCgroup(siblingName))
        _ = try other.prepareParent()
        let job = try other.create(name: "job-1", limits: CgroupLimits(pids: 16))
        let process = try await spawnInCgroup(other.procsFiles(job), "sleep 60")

        XCTAssertTrue(driver.siblingParentNames().contains(siblingName))
        XCTAssertFalse(driver.siblingParentNames().contains(parentName))
        let sibling = try XCTUnwrap(driver.sibling(parentName: siblingName))
        XCTAssertEqual(sibling.parentDirectories, other.parentDirectories)
        XCTAssertTrue(try sibling.members(of: sibling.parentCgroup).contains(process.pid))
        XCTAssertNotNil(sibling.parentModificationTime())

        try await sibling.killAndRemove(sibling.parentCgroup, deadline: .now + .seconds(5))
        let outcome = await process.wait(TerminationPolicy(killGrace: .zero))
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        for directory in other.parentDirectories {
            XCTAssertFalse(FileManager.default.fileExists(atPath: directory), directory)
        }
        XCTAssertNil(sibling.parentModificationTime())
        for directory in driver.parentDirectories { XCTAssertTrue(FileManager.default.fileExists(atPath: directory)) }
    }

    func testRemoveOfAPopulatedCgroupGivesUpAtTheDeadlineNamingIt() async throws {
        let job = try driver.create(name: "job-busy", limits: CgroupLimits())
        let process = try await spawnInCgroup(driver.procsFiles(job), "sleep 60")

        do {
            try await driver.remove(job, deadline: .now + .milliseconds(200))
            XCTFail("remove returned while the job still ran")
        } catch {
            XCTAssertEqual(error.code, .stillPopulated)
            XCTAssertEqual(error.path, job.directories[0])
            XCTAssertTrue(error.message.contains("\(process.pid)"), error.message)
        }
        XCTAssertTrue(processIsAlive(process.pid))
        try await driver.killAndRemove(job, deadline: .now + .seconds(5))
        _ = await process.wait(TerminationPolicy(killGrace: .zero))
    }
}
