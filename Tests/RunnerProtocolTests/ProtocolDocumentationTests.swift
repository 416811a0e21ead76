import Foundation
import RunnerProtocol
import XCTest

/// docs/protocol.md and the code must name the same keys, fields, event types and states.
final class ProtocolDocumentationTests: XCTestCase {
    private var document: String {
        get throws {
            let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
                .deletingLastPathComponent()
            return try String(contentsOf: root.appendingPathComponent("docs/protocol.md"), encoding: .utf8)
        }
    }

    /// Every `code span` in the document.
    private func codeSpans() throws -> Set<String> {
        var spans = Set<String>()
        let text = try document
        var current: String?
        for character in text {
            if character == "`" {
                if let span = current { spans.insert(span) }
                current = current == nil ? "" : nil
            } else if current != nil {
                current!.append(character)
            }
        }
        return spans
    }

    func testEveryCodeNameIsDocumented() throws {
        let spans = try codeSpans()
        var names: [String] = []
        names += Keyspace.documentedPatterns
        names += EventType.allCases.map(\.rawValue)
        names += JobState.allCases.map(\.rawValue)
        names += RunnerState.allCases.map(\.rawValue)
        names += JobEntryField.all + EventField.all + HeartbeatField.all + ResultField.all + LogField.all
        names += DeadLetterField.all + RunnerRecordField.all + JobSpec.Key.all + Backoff.Key.all + JobEnvironment.all
        names += Backoff.Jitter.allCases.map(\.rawValue)
        names += [LogField.stdout, LogField.stderr, LogField.meta, Keyspace.consumerGroup, Keyspace.defaultQueue]
        names += ControlField.all + ControlCommandName.allCases.map(\.rawValue) + ControlOutcome.allCases.map(\.rawValue)
        let missing = names.filter { !spans.contains($0) }
        XCTAssertEqual(missing, [], "named in code but not in docs/protocol.md")
    }

    func testEveryDocumentedEventAndStateExistsInCode() throws {
        let spans = try codeSpans()
        let eventLike = spans.filter { $0.range(of: #"^(job|runner)\.[a-z_]+$"#, options: .regularExpression) != nil }
        let known = Set(EventType.allCases.map(\.rawValue))
        XCTAssertEqual(eventLike.subtracting(known), [], "event types in docs/protocol.md that the code lacks")

        // The states table: rows "| `state` | meaning | yes/no |".
        let stateRows = try document.split(separator: "\n").filter { $0.hasSuffix("| yes |") || $0.hasSuffix("| no |") }
        let documentedStates = Set(
            stateRows.compactMap { row -> String? in
                let cells = row.split(separator: "|").map { $0.trimmingCharacters(in: .whitespaces) }
                return cells.first.map { $0.trimmingCharacters(in: CharacterSet(charactersIn: "`")) }
            })
        XCTAssertEqual(documentedStates, Set(JobState.allCases.map(\.rawValue)))
        for state in JobState.allCases {
            let row = stateRows.first { $0.hasPrefix("| `\(state.rawValue)` |") }
            XCTAssertEqual(row?.hasSuffix(state.isTerminal ? "| yes |" : "| no |"), true, "terminal flag of \(state)")
        }
    }

    func testVersionIsDocumented() throws {
        XCTAssertTrue(try document.hasPrefix("# NativeRunner protocol, version \(ProtocolVersion.current)"))
    }
}
