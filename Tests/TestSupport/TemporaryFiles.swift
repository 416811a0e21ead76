import Foundation

/// Files a test writes (config files and the like), removed when this goes away.
public final class TemporaryFiles {
    private var urls: [URL] = []

    public init() {}

    /// Writes `text` to a new file in the temporary directory and returns its path.
    public func write(_ text: String, suffix: String = ".json") throws -> String {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("nr-test-\(UUID().uuidString)\(suffix)")
        try Data(text.utf8).write(to: url)
        urls.append(url)
        return url.path
    }

    /// Removes the files written so far. For a test case's `tearDown`: XCTest keeps every test case object until
    /// the process ends, so a deinit would never run before then.
    public func removeAll() {
        for url in urls { try? FileManager.default.removeItem(at: url) }
        urls = []
    }

    deinit { removeAll() }
}
