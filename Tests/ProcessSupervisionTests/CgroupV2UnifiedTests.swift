import Foundation
import ProcessSupervision
import TestSupport
import XCTest

/// The v2 driver on this host's real cgroup2 mount (needs root; limits need controllers the host may not offer).
final class CgroupV2UnifiedTests: XCTestCase {
    private var driver: CgroupV2Driver!
    private var preparation: CgroupPreparation!

    override func setUp() async throws {
        guard getuid() == 0 else { throw XCTSkip("cgroup v2 tests need root to create cgroups") }
        let unified: CgroupV2Hierarchy
        switch try CgroupHierarchy.detect() {
        case .unified(let hierarchy), .hybrid(_, let hierarchy): unified = hierarchy
        case .legacy: throw XCTSkip("this host has no cgroup2 mount")
        }
        guard unified.ownDirectory == unified.mountPoint else {
            // Below the root, prepareParent would move this test process into a leaf: not something a test does.
            throw XCTSkip("the test process is not in the cgroup2 root (\(unified.ownDirectory))")
        }
        driver = CgroupV2Driver(hierarchy: unified, parent: .belowOwnCgroup(uniqueCgroupParentName()))
        preparation = try driver.prepareParent()
    }

    override func tearDown() async throws {
        if let driver { await removeEverything(under: driver) }
        for directory in driver?.parentDirectories ?? [] {
            XCTAssertFalse(FileManager.default.fileExists(atPath: directory), "\(directory) left behind")
        }
    }

    func testAJobJoinsAndCgroupKillTakesEveryMember() async throws {
        let job = try driver.create(name: "job-kill", limits: CgroupLimits())
        let procs = try XCTUnwrap(driver.procsFiles(job).first)
        let process = try await spawnInCgroup([procs], "sleep 60 & setsid sleep 60 & wait")
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { cgroupMembers(ofProcsFile: procs).count == 3 })
        let members = cgroupMembers(ofProcsFile: procs)
        XCTAssertNotNil(try driver.usage(job).userCPUTime, "cpu.stat is a core file of every v2 cgroup")

        try await driver.kill(job, deadline: .now + .seconds(5))

        XCTAssertEqual(cgroupMembers(ofProcsFile: procs), [])
        XCTAssertTrue(waitUntil(timeout: .seconds(5)) { !members.contains(where: processIsAlive) })
        let outcome = await process.wait(TerminationPolicy(killGrace: .zero))
        XCTAssertEqual(outcome.termination, .signaled(SIGKILL))
        XCTAssertEqual(try driver.jobCgroups(namePrefix: "job-"), [job])

        try await driver.remove(job, deadline: .now + .seconds(5))

        XCTAssertFalse(FileManager.default.fileExists(atPath: job.directories[0]))
        XCTAssertEqual(try driver.jobCgroups(namePrefix: "job-"), [])
    }

    func testLimitsAreWrittenWhereTheControllersAreOffered() async throws {
        let limits = CgroupLimits(memoryBytes: 64 << 20, pids: 32, cpuMillis: 500, cpuWeight: 200)
        let missing = CgroupV2Driver.usedControllers.filter { !preparation.controllers.contains($0) }
        if !missing.isEmpty {
            // What the host cannot give is refused, not silently left out.
            XCTAssertThrowsError(try driver.create(name: "job-limits", limits: limits)) {
                XCTAssertEqual(($0 as? CgroupError)?.code, .controllerMissing)
            }
            throw XCTSkip(
                "cgroup v2 limits not checked: this host's cgroup2 does not offer \(missing.joined(separator: ", ")) "
                    + "(\(preparation.missingControllers.joined(separator: "; ")))")
        }
        let job = try driver.create(name: "job-limits", limits: limits)
        let directory = job.directories[0]
        XCTAssertEqual(cgroupValue(directory, "memory.max"), "67108864")
        XCTAssertEqual(cgroupValue(directory, "pids.max"), "32")
        XCTAssertEqual(cgroupValue(directory, "cpu.max"), "50000 100000")
        XCTAssertEqual(cgroupValue(directory, "cpu.weight"), "200")
        if FileManager.default.fileExists(atPath: directory + "/memory.swap.max") {
            XCTAssertEqual(cgroupValue(directory, "memory.swap.max"), "0")
        }
    }
}
