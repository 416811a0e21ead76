import Foundation
import XCTest

@testable import ProcessSupervision

/// The /proc/<pid>/stat parser behind every process table: a misread field would make a recycled pid look like the
/// process it replaced (the start time) or a live process look dead (the state and thread count).
final class ProcessTableTests: XCTestCase {
    func testThisProcessReadsAsItsStatSays() throws {
        let stat = try String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
        let afterName = stat[stat.index(after: try XCTUnwrap(stat.lastIndex(of: ")")))...]
        // Fields from the third on: state, ppid, pgrp, ... start time is the 22nd field.
        let fields = afterName.split(separator: " ")
        let table = try XCTUnwrap(ProcessTable.read())
        let me = try XCTUnwrap(table.entries[getpid()])
        XCTAssertEqual(me.pid, getpid())
        XCTAssertEqual(me.parent, getppid())
        XCTAssertEqual(me.group, getpgrp())
        XCTAssertEqual(me.threads, Int(fields[20 - 3]))
        XCTAssertGreaterThan(me.threads, 1)
        XCTAssertEqual(me.startTime, UInt64(fields[22 - 3]))
        XCTAssertGreaterThan(me.startTime, 0)
        XCTAssertFalse(me.isZombie)
    }
}
