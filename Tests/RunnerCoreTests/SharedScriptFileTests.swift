import Foundation
import XCTest

@testable import RunnerCore

/// docs/scripts/reschedule.lua is the reaper's reschedule script as the runner runs it, for control planes in other
/// languages (scripts/examples/control_plane.py loads it): one source of truth, `RunnerScripts.reschedule`, and this
/// test fails when the file no longer matches it. `NR_WRITE_SCRIPTS=1 swift test --filter SharedScriptFileTests`
/// rewrites the file's script part.
final class SharedScriptFileTests: XCTestCase {
    private static let file = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().appendingPathComponent("docs/scripts/reschedule.lua")
    /// The file opens with a comment that documents KEYS, ARGV and replies; the script follows this line.
    private static let marker = "-- The script, exactly as RunnerScripts.reschedule (do not edit below this line):\n"

    func testRescheduleLuaFileIsTheReapersScript() throws {
        let text = try String(contentsOf: Self.file, encoding: .utf8)
        let parts = text.components(separatedBy: Self.marker)
        XCTAssertEqual(parts.count, 2, "docs/scripts/reschedule.lua lacks the line \(Self.marker)")
        let header = parts.first ?? ""
        XCTAssertTrue(
            header.split(separator: "\n").allSatisfy { $0.hasPrefix("--") }, "the header is Lua comments only")
        if ProcessInfo.processInfo.environment["NR_WRITE_SCRIPTS"] == "1" {
            try (header + Self.marker + RunnerScripts.reschedule.source + "\n").write(
                to: Self.file, atomically: true, encoding: .utf8)
            return
        }
        XCTAssertEqual(
            parts.last, RunnerScripts.reschedule.source + "\n",
            "docs/scripts/reschedule.lua differs from RunnerScripts.reschedule: rewrite it with NR_WRITE_SCRIPTS=1")
    }
}
