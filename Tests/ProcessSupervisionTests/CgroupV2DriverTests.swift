import Foundation
import ProcessSupervision
import TestSupport
import XCTest

/// The v2 driver against a fake cgroup tree: every file it writes and reads.
final class CgroupV2DriverTests: XCTestCase {
    private let own = "/sys/fs/cgroup/system.slice/runner.service"
    private let parent = "/sys/fs/cgroup/system.slice/runner.service/jobs"

    /// A tree whose root offers cpu, io, memory and pids and already enables memory and pids for its children (cpu is
    /// left for the driver), and the runner's own cgroup with two members (none when the tree lists live members only:
    /// the fake pids would vanish).
    private func makeTree(
        absentFiles: Set<String> = [], dropsExitedMembers: Bool = false
    ) throws -> (FakeCgroupTree, CgroupV2Driver) {
        let tree = try FakeCgroupTree(
            offering: ["cpu", "io", "memory", "pids"], absentFiles: absentFiles,
            dropsExitedMembers: dropsExitedMembers)
        try tree.writeFile("/sys/fs/cgroup/cgroup.subtree_control", "+memory +pids")
        try tree.makeCgroup(own, members: dropsExitedMembers ? [] : impossiblePids)
        let hierarchy = CgroupV2Hierarchy(
            mountPoint: "/sys/fs/cgroup", ownDirectory: own, availableControllers: ["memory", "pids"])
        return (tree, CgroupV2Driver(hierarchy: hierarchy, parent: .belowOwnCgroup("jobs"), fileSystem: tree))
    }

    private func words(_ text: String?) -> [String] {
        (text ?? "").split(whereSeparator: { $0 == " " || $0 == "\n" }).map(String.init).sorted()
    }

    func testPrepareParentEnablesControllersDownTheChainAndMovesTheRunnerIntoALeaf() throws {
        let (tree, driver) = try makeTree()
        let report = try driver.prepareParent()

        for cgroup in ["/sys/fs/cgroup", "/sys/fs/cgroup/system.slice", own, parent] {
            XCTAssertEqual(
                words(tree.content(cgroup + "/cgroup.subtree_control")), ["cpu", "memory", "pids"],
                "subtree_control of \(cgroup)")
        }
        // The runner's cgroup had members, so they moved into the leaf before it could enable controllers.
        XCTAssertEqual(tree.content(own + "/supervisor/cgroup.procs"), impossiblePids.map { "\($0)\n" }.joined())
        XCTAssertEqual(tree.content(own + "/cgroup.procs"), "")
        XCTAssertEqual(
            report,
            CgroupPreparation(
                parentDirectories: [parent], controllers: ["cpu", "memory", "pids"], missingControllers: [],
                movedProcessesTo: own + "/supervisor"))
        // The root already had memory and pids: only cpu was written there.
        XCTAssertEqual(tree.writes.first?.path, "/sys/fs/cgroup/cgroup.subtree_control")
        XCTAssertEqual(tree.writes.filter { $0.path == "/sys/fs/cgroup/cgroup.subtree_control" }.last?.value, "+cpu")

        // Idempotent: a second call writes nothing and moves nothing.
        let writesBefore = tree.writes.count
        let again = try driver.prepareParent()
        XCTAssertEqual(tree.writes.count, writesBefore)
        XCTAssertNil(again.movedProcessesTo)
    }

    func testPrepareParentReportsWhatTheHierarchyDoesNotOfferAndCreateRefusesLimitsThatNeedIt() throws {
        let tree = try FakeCgroupTree(offering: ["memory"])
        let hierarchy = CgroupV2Hierarchy(
            mountPoint: "/sys/fs/cgroup", ownDirectory: "/sys/fs/cgroup", availableControllers: ["memory"])
        let driver = CgroupV2Driver(hierarchy: hierarchy, parent: .fromRoot("/nativerunner"), fileSystem: tree)

        let report = try driver.prepareParent()

        XCTAssertEqual(report.controllers, ["memory"])
        XCTAssertEqual(
            report.missingControllers,
            [
                "cpu: not offered to /sys/fs/cgroup (cgroup.controllers: memory)",
                "pids: not offered to /sys/fs/cgroup (cgroup.controllers: memory)",
            ])
        XCTAssertNil(report.movedProcessesTo)  // the root may enable controllers with members of its own
        XCTAssertEqual(tree.content("/sys/fs/cgroup/nativerunner/cgroup.subtree_control"), "memory")
        XCTAssertThrowsError(try driver.create(name: "job-1", limits: CgroupLimits(memoryBytes: 64 << 20, pids: 8))) {
            let error = $0 as? CgroupError
            XCTAssertEqual(error?.code, .controllerMissing)
            XCTAssertEqual(error?.path, "/sys/fs/cgroup/nativerunner/cgroup.subtree_control")
            XCTAssertTrue(
                error?.message.contains("pids limit needs the cgroup v2 pids controller") ?? false,
                "\(String(describing: error))")
        }
        XCTAssertFalse(tree.hasDirectory("/sys/fs/cgroup/nativerunner/job-1"), "nothing is created for a refused job")
        XCTAssertNoThrow(try driver.create(name: "job-2", limits: CgroupLimits(memoryBytes: 64 << 20)))
    }

    func testAnAncestorWithProcessesOfItsOwnIsReportedNotEmptied() throws {
        let tree = try FakeCgroupTree(offering: ["cpu", "memory", "pids"])
        try tree.writeFile("/sys/fs/cgroup/cgroup.subtree_control", "+memory")
        try tree.makeCgroup("/sys/fs/cgroup/system.slice", members: [impossiblePids[0]])
        try tree.makeCgroup(own)
        let hierarchy = CgroupV2Hierarchy(
            mountPoint: "/sys/fs/cgroup", ownDirectory: own, availableControllers: ["memory"])
        let driver = CgroupV2Driver(hierarchy: hierarchy, parent: .belowOwnCgroup("jobs"), fileSystem: tree)

        let report = try driver.prepareParent()

        XCTAssertEqual(report.controllers, [])
        XCTAssertNil(report.movedProcessesTo)
        XCTAssertEqual(tree.content("/sys/fs/cgroup/system.slice/cgroup.procs"), "\(impossiblePids[0])\n")
        let refused = "\(tree.root)/sys/fs/cgroup/system.slice/cgroup.subtree_control: it has processes of its own"
        XCTAssertEqual(report.missingControllers.count, 3)
        XCTAssertTrue(
            report.missingControllers[1].hasPrefix("memory: cannot enable memory in \(refused)"),
            report.missingControllers[1])
        XCTAssertTrue(report.description.contains("controllers: none; missing: cpu: cannot enable cpu in "))
        XCTAssertTrue(tree.hasDirectory(parent), "the parent exists; jobs without limits can still use it")
    }

    func testCreateWritesEveryLimitExactly() throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        let limits = CgroupLimits(memoryBytes: 64 << 20, pids: 32, cpuMillis: 500, cpuWeight: 200)

        let job = try driver.create(name: "job-a", limits: limits)

        let directory = parent + "/job-a"
        XCTAssertEqual(job, JobCgroup(name: "job-a", directories: [directory]))
        XCTAssertEqual(tree.content(directory + "/memory.max"), "67108864")
        XCTAssertEqual(tree.content(directory + "/memory.swap.max"), "0")
        XCTAssertEqual(tree.content(directory + "/pids.max"), "32")
        XCTAssertEqual(tree.content(directory + "/cpu.max"), "50000 100000")
        XCTAssertEqual(tree.content(directory + "/cpu.weight"), "200")
        XCTAssertEqual(driver.procsFiles(job), [directory + "/cgroup.procs"])

        // Unset limits are not written at all.
        let plain = try driver.create(name: "job-b", limits: CgroupLimits())
        XCTAssertEqual(tree.content(plain.directories[0] + "/memory.max"), "max")
        XCTAssertEqual(tree.content(plain.directories[0] + "/cpu.max"), "max 100000")
        XCTAssertFalse(tree.writes.contains { $0.path.hasPrefix(plain.directories[0] + "/") })
    }

    func testCreateWithoutSwapAccountingLeavesSwapAlone() throws {
        let (tree, driver) = try makeTree(absentFiles: ["memory.swap.max"])
        _ = try driver.prepareParent()

        let job = try driver.create(name: "job-a", limits: CgroupLimits(memoryBytes: 32 << 20))

        XCTAssertEqual(tree.content(job.directories[0] + "/memory.max"), "33554432")
        XCTAssertNil(tree.content(job.directories[0] + "/memory.swap.max"))
        XCTAssertFalse(tree.writes.contains { $0.path.hasSuffix("memory.swap.max") })
    }

    func testAFailedLimitWriteRemovesTheNewCgroupAndNamesTheFile() throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        tree.failWrites(to: parent + "/job-a/pids.max", errno: EINVAL)

        XCTAssertThrowsError(try driver.create(name: "job-a", limits: CgroupLimits(memoryBytes: 16 << 20, pids: 4))) {
            let error = $0 as? CgroupError
            XCTAssertEqual(error?.code, .writeFailed)
            XCTAssertEqual(error?.errno, EINVAL)
            XCTAssertEqual(error?.path, tree.root + parent + "/job-a/pids.max")
            XCTAssertEqual(
                error?.message, "cannot write '4' to \(tree.root)\(parent)/job-a/pids.max: Invalid argument")
        }
        XCTAssertFalse(tree.hasDirectory(parent + "/job-a"))
    }

    func testCreateRefusesBadNamesAndLimitValues() throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        for name in ["", ".", "..", "a/b", "line\nbreak"] {
            XCTAssertThrowsError(try driver.create(name: name, limits: CgroupLimits()), "name '\(name)'") {
                XCTAssertEqual(($0 as? CgroupError)?.code, .invalidArgument)
            }
        }
        for limits in [
            CgroupLimits(cpuMillis: 5), CgroupLimits(cpuWeight: 0), CgroupLimits(cpuWeight: 10_001),
            CgroupLimits(pids: 0), CgroupLimits(memoryBytes: 4096),
        ] {
            XCTAssertThrowsError(try driver.create(name: "job-x", limits: limits), "\(limits)") {
                XCTAssertEqual(($0 as? CgroupError)?.code, .invalidArgument)
            }
        }
        XCTAssertEqual(try tree.subdirectories(of: parent), [])
        // A name already in use is the kernel's EEXIST, reported with the path.
        _ = try driver.create(name: "job-x", limits: CgroupLimits())
        XCTAssertThrowsError(try driver.create(name: "job-x", limits: CgroupLimits())) {
            XCTAssertEqual(($0 as? CgroupError)?.code, .createFailed)
            XCTAssertEqual(($0 as? CgroupError)?.errno, EEXIST)
        }
    }

    func testUsageParsesTheCgroupsOwnCounters() throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        let job = try driver.create(name: "job-a", limits: CgroupLimits(memoryBytes: 64 << 20))
        let directory = job.directories[0]
        try tree.plant(directory + "/memory.current", "1234567\n")
        try tree.plant(directory + "/memory.peak", "67100000\n")
        try tree.plant(directory + "/memory.events", "low 0\nhigh 0\nmax 57\noom 3\noom_kill 2\noom_group_kill 0\n")
        try tree.plant(
            directory + "/cpu.stat",
            "usage_usec 750000\nuser_usec 500000\nsystem_usec 250000\nnice_usec 0\ncore_sched.force_idle_usec 0\n"
                + "nr_periods 40\nnr_throttled 12\nthrottled_usec 345678\nnr_bursts 0\nburst_usec 0\n")
        try tree.plant(directory + "/pids.current", "3\n")
        try tree.plant(directory + "/pids.peak", "9\n")
        try tree.plant(directory + "/pids.events", "max 4\n")

        let usage = try driver.usage(job)

        XCTAssertEqual(
            usage,
            CgroupUsage(
                memoryCurrentBytes: 1_234_567, memoryPeakBytes: 67_100_000, memoryLimitBytes: 64 << 20,
                oomKillCount: 2, userCPUTime: .milliseconds(500), systemCPUTime: .milliseconds(250), pidsCurrent: 3,
                pidsPeak: 9, pidsLimitHits: 4, cpuPeriods: 40, cpuThrottledPeriods: 12,
                cpuThrottledTime: .microseconds(345_678)))
        XCTAssertTrue(usage.wasOOMKilled)
        XCTAssertEqual(usage.totalCPUTime, .milliseconds(750))
    }

    func testUsageOfAKernelWithoutPeakFilesLeavesThemUnknown() throws {
        let (tree, driver) = try makeTree(absentFiles: ["memory.peak", "pids.peak"])
        _ = try driver.prepareParent()
        let job = try driver.create(name: "job-a", limits: CgroupLimits())
        try tree.plant(job.directories[0] + "/memory.events", "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")

        let usage = try driver.usage(job)

        XCTAssertNil(usage.memoryPeakBytes)
        XCTAssertNil(usage.pidsPeak)
        XCTAssertNil(usage.memoryLimitBytes)  // "max"
        XCTAssertEqual(usage.oomKillCount, 0)
        XCTAssertFalse(usage.wasOOMKilled)
        XCTAssertEqual(usage.memoryCurrentBytes, 0)
    }

    func testUsageNamesAFileItCannotParse() throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        let job = try driver.create(name: "job-a", limits: CgroupLimits())
        try tree.plant(job.directories[0] + "/memory.current", "lots\n")

        XCTAssertThrowsError(try driver.usage(job)) {
            let error = $0 as? CgroupError
            XCTAssertEqual(error?.code, .unexpectedContent)
            XCTAssertEqual(error?.path, job.directories[0] + "/memory.current")
            XCTAssertTrue(error?.message.contains("'lots\n'") ?? false, "\(String(describing: error))")
        }
    }

    func testKillWritesCgroupKillAndReturnsOnceTheCgroupIsEmpty() async throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        let job = try driver.create(name: "job-a", limits: CgroupLimits())
        try tree.plant(job.directories[0] + "/cgroup.procs", impossiblePids.map { "\($0)\n" }.joined())

        try await driver.kill(job, deadline: .now + .seconds(5))

        XCTAssertEqual(tree.content(job.directories[0] + "/cgroup.kill"), "1")
        XCTAssertEqual(tree.content(job.directories[0] + "/cgroup.procs"), "")
        XCTAssertFalse(tree.writes.contains { $0.path.hasSuffix("cgroup.freeze") })
    }

    func testKillWithoutCgroupKillFreezesSignalsEveryMemberAndThaws() async throws {
        let (tree, driver) = try makeTree(absentFiles: ["cgroup.kill"], dropsExitedMembers: true)
        _ = try driver.prepareParent()
        let job = try driver.create(name: "job-a", limits: CgroupLimits())
        let sleepers = try await (0..<2).asyncMap { _ in
            try await Shared.supervisor.spawn(ProcessSpec(executable: "/bin/sleep", arguments: ["sleep", "60"])) {
                _, _ in
            }
        }
        try tree.plant(job.directories[0] + "/cgroup.procs", sleepers.map { "\($0.pid)\n" }.joined())

        try await driver.kill(job, deadline: .now + .seconds(5))

        for sleeper in sleepers {
            let outcome = await sleeper.wait(TerminationPolicy(killGrace: .zero))
            XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        }
        let freezes = tree.writes.filter { $0.path == job.directories[0] + "/cgroup.freeze" }.map(\.value)
        XCTAssertEqual(freezes.first, "1")
        XCTAssertEqual(freezes.last, "0", "the cgroup is left thawed")
    }

    func testKillGivesUpAtTheDeadlineNamingWhatIsLeft() async throws {
        let (tree, driver) = try makeTree(absentFiles: ["cgroup.kill"])
        _ = try driver.prepareParent()
        let job = try driver.create(name: "job-a", limits: CgroupLimits())
        try tree.plant(job.directories[0] + "/cgroup.procs", "\(impossiblePids[0])\n")

        do {
            try await driver.kill(job, deadline: .now + .milliseconds(200))
            XCTFail("kill returned although a member stayed")
        } catch {
            XCTAssertEqual(error.code, .stillPopulated)
            XCTAssertEqual(error.path, job.directories[0])
            XCTAssertTrue(
                error.message.hasSuffix("still has 1 process(es) when the deadline passed: 5000001"), error.message)
        }
        XCTAssertEqual(tree.content(job.directories[0] + "/cgroup.freeze"), "0", "thawed even when it gives up")
    }

    func testRemoveRetriesWhileTheKernelAnswersBusy() async throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        let job = try driver.create(name: "job-a", limits: CgroupLimits())
        tree.answerBusy(job.directories[0], times: 3)

        try await driver.remove(job, deadline: .now + .seconds(5))

        XCTAssertFalse(tree.hasDirectory(job.directories[0]))
        XCTAssertEqual(tree.removeAttempts(job.directories[0]), 4)
        // Removing what is already gone is not an error.
        try await driver.remove(job, deadline: .now + .seconds(1))
    }

    func testRemoveGivesUpAtTheDeadlineWithTheBusyPath() async throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        let job = try driver.create(name: "job-a", limits: CgroupLimits())
        tree.answerBusy(job.directories[0], times: .max)

        do {
            try await driver.remove(job, deadline: .now + .milliseconds(100))
            XCTFail("remove returned although rmdir kept answering EBUSY")
        } catch {
            XCTAssertEqual(error.code, .removeFailed)
            XCTAssertEqual(error.errno, EBUSY)
            XCTAssertEqual(error.path, tree.root + job.directories[0])
        }
        XCTAssertTrue(tree.hasDirectory(job.directories[0]))
        XCTAssertGreaterThan(tree.removeAttempts(job.directories[0]), 1)
    }

    func testRemoveWaitsForMembersAndRemovesChildCgroupsFirst() async throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        let job = try driver.create(name: "job-a", limits: CgroupLimits())
        try tree.makeDirectory(job.directories[0] + "/made-by-the-job")
        try tree.plant(job.directories[0] + "/cgroup.procs", "\(impossiblePids[0])\n")

        do {
            try await driver.remove(job, deadline: .now + .milliseconds(100))
            XCTFail("remove returned although a member stayed")
        } catch {
            XCTAssertEqual(error.code, .stillPopulated)
        }
        XCTAssertFalse(tree.hasDirectory(job.directories[0] + "/made-by-the-job"))

        try tree.plant(job.directories[0] + "/cgroup.procs", "")
        try await driver.remove(job, deadline: .now + .seconds(1))
        XCTAssertFalse(tree.hasDirectory(job.directories[0]))
    }

    /// Another runner's parent beside this one's: listed, reached through a driver of its own, its members (its
    /// job cgroups' included) read, and killed and removed whole; this runner's parent is left alone.
    func testASiblingParentIsListedAndRemovedWithItsJobCgroups() async throws {
        let (tree, driver) = try makeTree()
        _ = try driver.prepareParent()
        let other = own + "/nativerunner-b"
        try tree.makeCgroup(other + "/job-1", members: impossiblePids)
        XCTAssertEqual(driver.siblingParentNames(), ["nativerunner-b", "supervisor"])
        XCTAssertNil(driver.sibling(parentName: "../x"))
        let sibling = try XCTUnwrap(driver.sibling(parentName: "nativerunner-b"))
        XCTAssertEqual(sibling.parentDirectories, [other])
        XCTAssertEqual(try sibling.jobCgroups(namePrefix: "job-").map(\.name), ["job-1"])
        XCTAssertEqual(try sibling.members(of: sibling.parentCgroup), impossiblePids)
        XCTAssertNotNil(sibling.parentModificationTime())
        XCTAssertNil(driver.sibling(parentName: "gone")?.parentModificationTime())

        try await sibling.killAndRemove(sibling.parentCgroup, deadline: .now + .seconds(5))
        XCTAssertTrue(tree.writes.contains { $0.path == other + "/cgroup.kill" && $0.value == "1" })
        XCTAssertFalse(tree.hasDirectory(other))
        XCTAssertTrue(tree.hasDirectory(parent))
        XCTAssertEqual(driver.siblingParentNames(), ["supervisor"])
    }

    func testJobCgroupsListsTheParentsChildrenByPrefix() throws {
        let (tree, driver) = try makeTree()
        XCTAssertEqual(try driver.jobCgroups(namePrefix: "job-"), [], "no parent yet: nothing to clean up")
        _ = try driver.prepareParent()
        for name in ["job-b", "other", "job-a"] { _ = try driver.create(name: name, limits: CgroupLimits()) }

        let found = try driver.jobCgroups(namePrefix: "job-")

        XCTAssertEqual(
            found,
            [
                JobCgroup(name: "job-a", directories: [parent + "/job-a"]),
                JobCgroup(name: "job-b", directories: [parent + "/job-b"]),
            ])
        XCTAssertTrue(tree.hasDirectory(own + "/supervisor"), "the runner's leaf is not under the parent")
    }
}

extension Sequence {
    /// `map` with an async throwing transform, in order.
    func asyncMap<T>(_ transform: (Element) async throws -> T) async rethrows -> [T] {
        var results: [T] = []
        for element in self { results.append(try await transform(element)) }
        return results
    }
}
