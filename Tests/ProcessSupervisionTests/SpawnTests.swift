import CRunnerShims
import Foundation
import ProcessSupervision
import XCTest

final class SpawnTests: XCTestCase {
    func testExitCodeZero() async throws {
        let (outcome, output) = try await runToEnd(ProcessSpec(executable: "/bin/true", arguments: ["true"]))
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertNil(outcome.stopReason)
        XCTAssertFalse(outcome.forcedKill)
        XCTAssertFalse(outcome.leftoverProcessesStopped)
        XCTAssertFalse(outcome.outputTruncatedByDrainLimit)
        XCTAssertGreaterThan(outcome.pid, 1)
        XCTAssertGreaterThan(outcome.wallTime, .zero)
        XCTAssertGreaterThan(outcome.maxResidentBytes, 0)
        XCTAssertEqual(output.stdout, [])
        XCTAssertEqual(output.stderr, [])
        XCTAssertFalse(processExists(outcome.pid))
    }

    func testExitCodeThree() async throws {
        let (outcome, _) = try await runToEnd(shell("exit 3"))
        XCTAssertEqual(outcome.termination, .exited(3))
        XCTAssertNil(outcome.stopReason)
    }

    func testKilledBySignal() async throws {
        let (outcome, _) = try await runToEnd(shell("kill -TERM $$"))
        XCTAssertEqual(outcome.termination, .signaled(SIGTERM))
        XCTAssertNil(outcome.stopReason)
        XCTAssertFalse(outcome.forcedKill)
    }

    func testBareNameNotFoundInPath() async throws {
        let error = await spawnError(ProcessSpec(executable: "nosuchcmd", arguments: ["nosuchcmd"]))
        XCTAssertEqual(error?.code, .executableNotFound)
        XCTAssertEqual(error?.errno, ENOENT)
        XCTAssertEqual(error?.conventionalExitCode, 127)
        XCTAssertEqual(error?.message, "cannot execute 'nosuchcmd': No such file or directory")
    }

    func testBareNameIsLookedUpInTheJobsPath() async throws {
        let found = ProcessSpec(executable: "echo", arguments: ["echo", "found"], environment: ["PATH": "/nope:/bin"])
        let (outcome, output) = try await runToEnd(found)
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertEqual(output.stdoutText, "found\n")

        // Not in this job's PATH, although it is in the runner's.
        let missing = ProcessSpec(executable: "echo", arguments: ["echo"], environment: ["PATH": "/nope"])
        let error = await spawnError(missing)
        XCTAssertEqual(error?.code, .executableNotFound)
    }

    func testMissingPathReportedByTheChild() async throws {
        let error = await spawnError(ProcessSpec(executable: "/no/such/program", arguments: ["x"]))
        XCTAssertEqual(error?.code, .executableNotFound)
        XCTAssertEqual(error?.errno, ENOENT)
        XCTAssertEqual(error?.conventionalExitCode, 127)
        XCTAssertEqual(error?.message, "cannot execute '/no/such/program': No such file or directory")
    }

    func testFileWithoutExecutePermission() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/script"
        try "#!/bin/sh\nexit 0\n".write(toFile: path, atomically: false, encoding: .utf8)
        XCTAssertEqual(chmod(path, 0o644), 0)

        let error = await spawnError(ProcessSpec(executable: path, arguments: ["script"]))
        XCTAssertEqual(error?.code, .permissionDenied)
        XCTAssertEqual(error?.errno, EACCES)
        XCTAssertEqual(error?.conventionalExitCode, 126)
        XCTAssertEqual(error?.message, "cannot execute '\(path)': Permission denied")
    }

    func testFileTheKernelCannotRun() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let path = "\(directory)/garbage"
        try Data([0x01, 0x02, 0x03, 0xff, 0x00, 0x7f]).write(to: URL(fileURLWithPath: path))
        XCTAssertEqual(chmod(path, 0o755), 0)

        let error = await spawnError(ProcessSpec(executable: path, arguments: ["garbage"]))
        XCTAssertEqual(error?.code, .notExecutable)
        XCTAssertEqual(error?.errno, ENOEXEC)
        XCTAssertEqual(error?.conventionalExitCode, 126)
    }

    func testInvalidWorkingDirectory() async throws {
        let spec = ProcessSpec(executable: "/bin/true", arguments: ["true"], workingDirectory: "/nope")
        let error = await spawnError(spec)
        XCTAssertEqual(error?.code, .invalidWorkingDirectory)
        XCTAssertEqual(error?.errno, ENOENT)
        XCTAssertEqual(error?.conventionalExitCode, 126)
        XCTAssertEqual(error?.message, "cannot change to working directory '/nope': No such file or directory")
    }

    func testArgumentListTooLong() async throws {
        // 64 × 128 000 bytes: past the kernel's limit for argv + envp (a quarter of the stack limit, at most 6 MiB).
        let big = String(repeating: "x", count: 128_000)
        let spec = ProcessSpec(executable: "/bin/echo", arguments: ["echo"] + Array(repeating: big, count: 64))
        let error = await spawnError(spec)
        XCTAssertEqual(error?.code, .argumentListTooLong)
        XCTAssertEqual(error?.errno, E2BIG)
        XCTAssertEqual(error?.conventionalExitCode, 126)
        XCTAssertEqual(error?.message, "argument list too long (E2BIG) for '/bin/echo'")
    }

    func testNULInAnArgumentIsRejectedBeforeTheFork() async throws {
        let error = await spawnError(ProcessSpec(executable: "/bin/echo", arguments: ["echo", "a\u{0}b"]))
        XCTAssertEqual(error?.code, .systemError)
        XCTAssertEqual(error?.errno, EINVAL)
        XCTAssertEqual(error?.message, "cannot start '/bin/echo': argument 1 contains a NUL byte")
    }

    func testEnvironmentIsExactlyWhatWasGiven() async throws {
        let spec = ProcessSpec(
            executable: "/usr/bin/env",
            arguments: ["env"],
            environment: ["B": "two words", "A": "1", "EMPTY": "", "PATH": "/bin"]
        )
        let (outcome, output) = try await runToEnd(spec)
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertEqual(output.stdoutText, "A=1\nB=two words\nEMPTY=\nPATH=/bin\n")

        let (_, empty) = try await runToEnd(ProcessSpec(executable: "/usr/bin/env", arguments: ["env"]))
        XCTAssertEqual(empty.stdoutText, "")
    }

    func testArgumentsArePassedVerbatim() async throws {
        let spec = ProcessSpec(executable: "/bin/cat", arguments: ["custom-argv0", "/proc/self/cmdline"])
        let (_, output) = try await runToEnd(spec)
        XCTAssertEqual(output.stdoutText, "custom-argv0\u{0}/proc/self/cmdline\u{0}")

        let arguments = ["sh", "-c", "printf '%s|' \"$@\"", "zero", "a b", "", "ü"]
        let script = ProcessSpec(executable: "/bin/sh", arguments: arguments)
        let (_, printed) = try await runToEnd(script)
        XCTAssertEqual(printed.stdoutText, "a b||ü|")
    }

    func testWorkingDirectoryIsHonoured() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let (outcome, output) = try await runToEnd(
            ProcessSpec(executable: "/bin/pwd", arguments: ["pwd", "-P"], workingDirectory: directory)
        )
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertEqual(output.stdoutText, "\(directory)\n")
    }

    func testRelativeExecutableIsResolvedInTheWorkingDirectory() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        try "#!/bin/sh\necho relative\n".write(toFile: "\(directory)/tool", atomically: false, encoding: .utf8)
        XCTAssertEqual(chmod("\(directory)/tool", 0o755), 0)
        let (outcome, output) = try await runToEnd(
            ProcessSpec(executable: "./tool", arguments: ["tool"], workingDirectory: directory)
        )
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertEqual(output.stdoutText, "relative\n")
    }

    func testStdinIsDevNull() async throws {
        let (outcome, output) = try await runToEnd(ProcessSpec(executable: "/bin/cat", arguments: ["cat"]))
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertEqual(output.stdout, [])

        let readlink = ProcessSpec(executable: "/bin/readlink", arguments: ["readlink", "/proc/self/fd/0"])
        let (_, link) = try await runToEnd(readlink)
        XCTAssertEqual(link.stdoutText, "/dev/null\n")
    }

    func testOwnSessionAndProcessGroup() async throws {
        // ps-free: the child prints its pid, pgid and sid from /proc/self/stat (fields 1, 5, 6).
        let (outcome, output) = try await runToEnd(shell("cut -d' ' -f1,5,6 /proc/$$/stat"))
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertEqual(output.stdoutLines, ["\(outcome.pid) \(outcome.pid) \(outcome.pid)"])
    }

    func testSignalDispositionsAndMaskAreReset() async throws {
        // The test process may ignore or block signals; the child must start with none ignored, none blocked.
        let previous = signal(SIGUSR1, SIG_IGN)
        defer { signal(SIGUSR1, previous) }
        let (_, output) = try await runToEnd(shell("grep -E '^Sig(Blk|Ign):' /proc/self/status"))
        XCTAssertEqual(output.stdoutLines, ["SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"])
    }

    func testNoFileDescriptorLeaksIntoTheChild() async throws {
        // Extra fds in the parent, deliberately without close-on-exec.
        let extra = (0..<5).map { _ in open("/dev/null", O_RDONLY) }
        defer { extra.forEach { close($0) } }
        XCTAssertTrue(extra.allSatisfy { $0 >= 0 })

        let ls = ProcessSpec(executable: "/bin/ls", arguments: ["ls", "/proc/self/fd"])
        let (outcome, output) = try await runToEnd(ls)
        XCTAssertEqual(outcome.termination, .exited(0))
        // 0, 1, 2 and the directory fd that ls itself opens.
        XCTAssertEqual(output.stdoutLines.sorted(), ["0", "1", "2", "3"])
    }

    func testDeathSignalIsSetWhenAsked() async throws {
        let python = "/usr/bin/python3"
        guard access(python, X_OK) == 0 else {
            throw XCTSkip("no \(python): PR_GET_PDEATHSIG cannot be read from a child without a helper")
        }
        let script = "import ctypes; v = ctypes.c_int(-1); ctypes.CDLL(None).prctl(2, ctypes.byref(v)); print(v.value)"
        for (dieWithParent, expected) in [(true, "9\n"), (false, "0\n")] {
            let spec = ProcessSpec(
                executable: python,
                arguments: ["python3", "-c", script],
                environment: ["PATH": testPath],
                dieWithParent: dieWithParent
            )
            let (outcome, output) = try await runToEnd(spec)
            XCTAssertEqual(outcome.termination, .exited(0))
            XCTAssertEqual(output.stdoutText, expected, "dieWithParent: \(dieWithParent)")
        }
    }

    /// A job's SIGCHLD goes to the thread that cloned it. The monitor thread must not block it: the kernel then
    /// drops it on arrival (its disposition is the default, ignore) instead of queueing it for the process, where it
    /// woke the runner's main thread and libdispatch's signalfd epoll once per job.
    func testTheMonitorThreadDoesNotBlockChildSignals() async throws {
        let (outcome, _) = try await runToEnd(ProcessSpec(executable: "/bin/true", arguments: ["true"]))
        XCTAssertEqual(outcome.termination, .exited(0))
        let masks = threadSignalMasks(named: "nr-supervisor")
        XCTAssertFalse(masks.isEmpty, "no monitor thread found")
        let sigchld = UInt64(1) << UInt64(SIGCHLD - 1)
        for (thread, blocked) in masks {
            XCTAssertEqual(blocked & sigchld, 0, "monitor thread \(thread) blocks SIGCHLD (SigBlk \(blocked))")
        }
    }

    func testTheCloneLeavesSIGCHLDUnblockedOnlyWhileItsDispositionIsTheDefault() throws {
        let sigchld = UInt64(1) << UInt64(SIGCHLD - 1)
        XCTAssertEqual(nr_spawn_signal_mask(), ~sigchld, "every signal but SIGCHLD is blocked during the clone")

        var handler = sigaction()
        handler.__sigaction_handler.sa_handler = { _ in }
        var previous = sigaction()
        XCTAssertEqual(sigaction(SIGCHLD, &handler, &previous), 0)
        let withHandler = nr_spawn_signal_mask()
        XCTAssertEqual(sigaction(SIGCHLD, &previous, nil), 0)
        XCTAssertEqual(withHandler, ~UInt64(0), "a SIGCHLD handler could run in the child: everything is blocked")
        XCTAssertEqual(nr_spawn_signal_mask(), ~sigchld)
    }

    func testManySpawnsLeakNeitherFdsNorThreadsNorZombies() async throws {
        let spec = ProcessSpec(executable: "/bin/true", arguments: ["true"])
        for _ in 0..<5 {
            _ = try await runToEnd(spec)  // warm up the pool and the supervisor
        }
        let fdsBefore = openFDCount()
        let threadsBefore = threadCount()
        for _ in 0..<300 {
            let (outcome, _) = try await runToEnd(spec)
            XCTAssertEqual(outcome.termination, .exited(0))
            XCTAssertNil(processState(outcome.pid), "pid \(outcome.pid) still exists after wait()")
        }
        XCTAssertEqual(openFDCount(), fdsBefore)
        XCTAssertLessThanOrEqual(threadCount(), threadsBefore)
    }
}
