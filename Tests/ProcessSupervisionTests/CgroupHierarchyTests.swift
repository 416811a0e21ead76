import Foundation
import ProcessSupervision
import XCTest

/// Detection of the cgroup layout from fake /proc/self/mountinfo and /proc/self/cgroup samples.
final class CgroupHierarchyTests: XCTestCase {
    private var root = ""

    override func setUpWithError() throws {
        root = try makeTemporaryDirectory()
    }

    override func tearDownWithError() throws {
        try? FileManager.default.removeItem(atPath: root)
    }

    /// Writes the fake host's files and detects.
    private func detect(_ files: [String: String]) throws -> CgroupHierarchy {
        for (path, content) in files {
            try FileManager.default.createDirectory(
                atPath: root + (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
            try content.write(toFile: root + path, atomically: false, encoding: .utf8)
        }
        return try CgroupHierarchy.detect(fileSystem: LiveCgroupFileSystem(root: root))
    }

    func testUnifiedHostOfAModernSystemdDistribution() throws {
        let own = "/user.slice/user-1000.slice/user@1000.service/app.slice/runner.service"
        let hierarchy = try detect([
            "/proc/self/mountinfo": """
            22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
            25 23 0:22 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
            26 23 0:23 / /sys/fs/pstore rw,nosuid,nodev,noexec,relatime shared:5 - pstore pstore rw

            """,
            "/proc/self/cgroup": "0::\(own)\n",
            "/sys/fs/cgroup\(own)/cgroup.controllers": "cpu memory pids\n",
        ])

        XCTAssertEqual(
            hierarchy,
            .unified(
                CgroupV2Hierarchy(
                    mountPoint: "/sys/fs/cgroup", ownDirectory: "/sys/fs/cgroup" + own,
                    availableControllers: ["cpu", "memory", "pids"])))
        XCTAssertEqual(hierarchy.preferredVersion, .v2)
        XCTAssertEqual(
            hierarchy.description,
            "cgroup v2 (unified): cgroup2 at /sys/fs/cgroup, own cgroup /sys/fs/cgroup\(own) "
                + "(controllers: cpu memory pids); jobs use the v2 driver")
        XCTAssertEqual(hierarchy.summary, "cgroups: v2 (unified); jobs use the v2 driver")
        XCTAssertEqual(hierarchy.makeDriver(parent: .belowOwnCgroup("jobs")).version, .v2)
    }

    func testLegacyHostWithCoMountedCPUControllers() throws {
        let own = "/system.slice/runner.service"
        let hierarchy = try detect([
            "/proc/self/mountinfo": """
            25 24 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
            26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
            29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
            30 25 0:27 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,memory
            31 25 0:28 / /sys/fs/cgroup/pids rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,pids
            32 25 0:29 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,freezer

            """,
            // No cgroup2 mount: the kernel's "0::/" line alone does not make a v2 hierarchy.
            "/proc/self/cgroup": """
            11:freezer:/
            10:pids:\(own)
            4:memory:\(own)
            3:cpu,cpuacct:\(own)
            1:name=systemd:\(own)
            0::/

            """,
        ])

        XCTAssertEqual(
            hierarchy,
            .legacy([
                CgroupV1Hierarchy(
                    controllers: ["freezer"], mountPoint: "/sys/fs/cgroup/freezer",
                    ownDirectory: "/sys/fs/cgroup/freezer"),
                CgroupV1Hierarchy(
                    controllers: ["pids"], mountPoint: "/sys/fs/cgroup/pids", ownDirectory: "/sys/fs/cgroup/pids" + own),
                CgroupV1Hierarchy(
                    controllers: ["memory"], mountPoint: "/sys/fs/cgroup/memory",
                    ownDirectory: "/sys/fs/cgroup/memory" + own),
                CgroupV1Hierarchy(
                    controllers: ["cpu", "cpuacct"], mountPoint: "/sys/fs/cgroup/cpu,cpuacct",
                    ownDirectory: "/sys/fs/cgroup/cpu,cpuacct" + own),
            ]))
        XCTAssertEqual(hierarchy.preferredVersion, .v1)
        XCTAssertTrue(
            hierarchy.description.hasPrefix("cgroup v1 (legacy): freezer at /sys/fs/cgroup/freezer, "),
            hierarchy.description)
        XCTAssertTrue(hierarchy.description.contains("cpu,cpuacct at /sys/fs/cgroup/cpu,cpuacct\(own)"))
        XCTAssertTrue(hierarchy.description.hasSuffix("; jobs use the v1 driver"))
        XCTAssertEqual(hierarchy.summary, "cgroups: v1 (legacy); jobs use the v1 driver")

        // The v1 driver puts a co-mounted cpu,cpuacct job in one directory, and leaves nothing out.
        let driver = hierarchy.makeDriver(parent: .belowOwnCgroup("jobs"))
        XCTAssertEqual(
            driver.parentDirectories,
            [
                "/sys/fs/cgroup/freezer/jobs", "/sys/fs/cgroup/pids\(own)/jobs", "/sys/fs/cgroup/memory\(own)/jobs",
                "/sys/fs/cgroup/cpu,cpuacct\(own)/jobs",
            ])
    }

    /// This host's own layout: v1 controllers, and an empty cgroup2 at /sys/fs/cgroup/unified.
    func testHybridHostKeepsTheControllersOnV1() throws {
        let memoryCgroup = "/process_api/3c3925e9b9ac5b1404436b93c223a9ed"
        let hierarchy = try detect([
            "/proc/self/mountinfo": """
            31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
            32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
            33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
            34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
            35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
            37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
            39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
            40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
            41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw

            """,
            "/proc/self/cgroup": """
            9:name=systemd:/
            8:pids:/
            6:freezer:/
            4:memory:\(memoryCgroup)
            3:cpuset:/
            2:cpuacct:/
            1:cpu:/
            0::/

            """,
            "/sys/fs/cgroup/unified/cgroup.controllers": "hugetlb\n",
        ])

        guard case .hybrid(let legacy, let unified) = hierarchy else {
            return XCTFail("expected a hybrid layout, got \(hierarchy)")
        }
        XCTAssertEqual(
            legacy.map(\.controllers), [["pids"], ["freezer"], ["memory"], ["cpuset"], ["cpuacct"], ["cpu"]])
        XCTAssertEqual(legacy[2].ownDirectory, "/sys/fs/cgroup/memory" + memoryCgroup)
        XCTAssertEqual(
            unified,
            CgroupV2Hierarchy(
                mountPoint: "/sys/fs/cgroup/unified", ownDirectory: "/sys/fs/cgroup/unified",
                availableControllers: ["hugetlb"]))
        XCTAssertEqual(hierarchy.preferredVersion, .v1)
        XCTAssertTrue(hierarchy.description.hasPrefix("cgroup hybrid: v1 pids at /sys/fs/cgroup/pids, "))
        XCTAssertEqual(hierarchy.summary, "cgroups: v1 (hybrid); jobs use the v1 driver")
        XCTAssertTrue(
            hierarchy.description.contains(
                "; cgroup2 at /sys/fs/cgroup/unified, own cgroup /sys/fs/cgroup/unified (controllers: hugetlb); jobs use the v1 driver"
            ), hierarchy.description)
        // cpuset is not one the driver uses: no job directory goes there.
        XCTAssertEqual(
            hierarchy.makeDriver(parent: .fromRoot("/nr")).parentDirectories,
            [
                "/sys/fs/cgroup/pids/nr", "/sys/fs/cgroup/freezer/nr", "/sys/fs/cgroup/memory/nr",
                "/sys/fs/cgroup/cpuacct/nr", "/sys/fs/cgroup/cpu/nr",
            ])
    }

    /// Inside a container the mount shows only the container's cgroup (mountinfo's root field), and a path with a
    /// space is escaped as \040.
    func testContainerMountRootAndEscapedMountPoint() throws {
        let hierarchy = try detect([
            "/proc/self/mountinfo":
                "40 31 0:38 /docker/abc /sys/fs/my\\040cgroup rw,relatime master:1 - cgroup2 cgroup2 rw\n",
            "/proc/self/cgroup": "0::/docker/abc/worker\n",
            "/sys/fs/my cgroup/worker/cgroup.controllers": "memory pids\n",
        ])

        XCTAssertEqual(
            hierarchy,
            .unified(
                CgroupV2Hierarchy(
                    mountPoint: "/sys/fs/my cgroup", ownDirectory: "/sys/fs/my cgroup/worker",
                    availableControllers: ["memory", "pids"])))
    }

    func testOwnCgroupOutsideTheMountIsNotUsable() throws {
        XCTAssertThrowsError(
            try detect([
                "/proc/self/mountinfo": "40 31 0:38 /docker/abc /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
                "/proc/self/cgroup": "0::/elsewhere\n",
            ])
        ) {
            XCTAssertEqual(($0 as? CgroupError)?.code, .notMounted)
        }
    }

    func testNoCgroupFilesystemIsATypedError() throws {
        XCTAssertThrowsError(
            try detect([
                "/proc/self/mountinfo": "22 1 0:21 / /proc rw - proc proc rw\n",
                "/proc/self/cgroup": "0::/\n",
            ])
        ) {
            let error = $0 as? CgroupError
            XCTAssertEqual(error?.code, .notMounted)
            XCTAssertEqual(error?.path, "/proc/self/mountinfo")
        }
        // A missing /proc is a read error naming the file.
        try? FileManager.default.removeItem(atPath: root + "/proc")
        XCTAssertThrowsError(try CgroupHierarchy.detect(fileSystem: LiveCgroupFileSystem(root: root))) {
            let error = $0 as? CgroupError
            XCTAssertEqual(error?.code, .readFailed)
            XCTAssertEqual(error?.errno, ENOENT)
            XCTAssertEqual(error?.path, root + "/proc/self/mountinfo")
        }
    }

    func testThisHostIsDetected() throws {
        let hierarchy = try CgroupHierarchy.detect()
        XCTAssertTrue(hierarchy.description.hasPrefix("cgroup "), hierarchy.description)
        let ownCgroupFile = try String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)
        let hasV1Memory = ownCgroupFile.split(separator: "\n").contains {
            $0.split(separator: ":").dropFirst().first?.split(separator: ",").contains("memory") ?? false
        }
        if hasV1Memory && FileManager.default.fileExists(atPath: "/sys/fs/cgroup/memory") {
            XCTAssertEqual(hierarchy.preferredVersion, .v1, hierarchy.description)
        }
    }
}
