import Foundation
import ProcessSupervision
import XCTest

final class OutputTests: XCTestCase {
    func testBytesAreJustBytes() async throws {
        let (outcome, output) = try await runToEnd(shell("printf '\\377\\376\\000a'; printf '\\200' >&2"))
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertEqual(output.stdout, [0xff, 0xfe, 0x00, 0x61])
        XCTAssertEqual(output.stderr, [0x80])
    }

    func testTwentyMegabytesOnEachStreamConcurrently() async throws {
        let directory = try makeTemporaryDirectory()
        defer { try? FileManager.default.removeItem(atPath: directory) }
        let size = 20 * 1024 * 1024
        var data = [UInt8](repeating: 0, count: size)
        var state: UInt64 = 0x9E37_79B9_7F4A_7C15  // xorshift64: deterministic, all byte values, no UTF-8 structure
        for index in 0..<size {
            state ^= state << 13
            state ^= state >> 7
            state ^= state << 17
            data[index] = UInt8(truncatingIfNeeded: state)
        }
        let path = "\(directory)/data"
        try Data(data).write(to: URL(fileURLWithPath: path))

        let start = ContinuousClock.now
        let (outcome, output) = try await runToEnd(shell("cat '\(path)' & cat '\(path)' >&2; wait"))
        let elapsed = ContinuousClock.now - start
        XCTAssertEqual(outcome.termination, .exited(0))
        XCTAssertFalse(outcome.outputTruncatedByDrainLimit)
        let stdout = output.stdout
        let stderr = output.stderr
        XCTAssertEqual(stdout.count, size)
        XCTAssertEqual(stderr.count, size)
        XCTAssertTrue(stdout == data, "stdout differs")
        XCTAssertTrue(stderr == data, "stderr differs")
        XCTAssertLessThan(elapsed, .seconds(10))
    }

    func testOutputWrittenJustBeforeExitIsDelivered() async throws {
        let (outcome, output) = try await runToEnd(shell("echo out; echo err >&2; exit 7"))
        XCTAssertEqual(outcome.termination, .exited(7))
        XCTAssertEqual(output.stdoutText, "out\n")
        XCTAssertEqual(output.stderrText, "err\n")
    }
}
