import Foundation
import HTTPEndpoint
import XCTest

extension HTTPRequestParser.Outcome {
    /// The status a refusal is answered with, nil when not refused.
    var status: Int? {
        guard case .invalid(let error) = self else { return nil }
        return error.status
    }
}

final class HTTPRequestParserTests: XCTestCase {
    let parser = HTTPRequestParser(maximumHeadBytes: 256, maximumHeaders: 4)

    func parse(_ text: String) -> HTTPRequestParser.Outcome { parser.parse(Array(text.utf8)) }

    func testAWholeGetIsParsedWithPathQueryAndHeaders() {
        XCTAssertEqual(
            parse("GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\nAccept:  text/plain \r\n\r\n"),
            .complete(
                HTTPRequestHead(
                    method: "GET", path: "/metrics", query: "x=1", version: "HTTP/1.1",
                    headers: [("host", "a"), ("accept", "text/plain")])))
    }

    func testBareLineFeedsAndHTTP10WithoutHostAreAccepted() {
        XCTAssertEqual(
            parse("GET /healthz HTTP/1.0\n\n"),
            .complete(HTTPRequestHead(method: "GET", path: "/healthz", version: "HTTP/1.0")))
        XCTAssertEqual(
            parse("\r\nGET / HTTP/1.0\r\n\r\n"),
            .complete(HTTPRequestHead(method: "GET", path: "/", version: "HTTP/1.0")))
    }

    func testAPartialHeadAsksForMore() {
        XCTAssertEqual(parse(""), .incomplete)
        XCTAssertEqual(parse("GET /metrics HTTP/1.1\r\nHost: a\r\n"), .incomplete)
        XCTAssertEqual(parse("\r\nGET /metr"), .incomplete)
        XCTAssertEqual(parse("GET /metrics HTTP/1.1\r"), .incomplete)
        // Bytes no request line may hold are refused before the head ends, not left to time out.
        for text in ["GET /a\u{1}", "GET /\u{7F}", "GET /é", "GET /a\tHTTP/1.1", "GET /a\rb"] {
            XCTAssertEqual(parse(text).status, 400, text.debugDescription)
        }
    }

    func testMalformedHeadsAreRefusedWithTheStatusTheyDeserve() {
        let cases: [(String, Int)] = [
            ("\u{0}\u{1}\u{2}binary", 400),
            ("GET\r\n\r\n", 400),
            ("GET /metrics\r\n\r\n", 400),
            ("GET  /metrics HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET /metrics HTTP/1.1 extra\r\nHost: a\r\n\r\n", 400),
            ("G(T /metrics HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET metrics HTTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET /metrics FTP/1.1\r\nHost: a\r\n\r\n", 400),
            ("GET /metrics HTTP/2.0\r\nHost: a\r\n\r\n", 505),
            ("GET /metrics HTTP/1.1\r\n\r\n", 400),
            ("GET /metrics HTTP/1.1\r\nHost a\r\n\r\n", 400),
            ("GET /metrics HTTP/1.1\r\n: a\r\n\r\n", 400),
            ("GET /metrics HTTP/1.1\r\nHo st: a\r\n\r\n", 400),
            ("GET /metrics HTTP/1.1\r\nHost: a\u{7F}\r\n\r\n", 400),
            ("GET /metrics HTTP/1.1\r\nHost: a\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\n\r\n", 431),
            ("GET /" + String(repeating: "x", count: 300) + " HTTP/1.1\r\nHost: a\r\n\r\n", 431),
            ("GET /" + String(repeating: "x", count: 300), 431),
        ]
        for (text, status) in cases {
            guard case .invalid(let error) = parse(text) else {
                XCTFail("accepted or waiting on \(text.debugDescription)")
                continue
            }
            XCTAssertEqual(error.status, status, text.debugDescription)
            XCTAssertFalse(error.message.isEmpty)
        }
    }

    func testRandomBytesNeverCrashTheParser() {
        var generator = SystemRandomNumberGenerator()
        for _ in 0..<2000 {
            let length = Int.random(in: 0...300, using: &generator)
            let bytes = (0..<length).map { _ in UInt8.random(in: 0...255, using: &generator) }
            _ = parser.parse(bytes)
            _ = parser.parse(Array("GET / HTTP/1.1\r\n".utf8) + bytes + Array("\r\n\r\n".utf8))
        }
    }

    func testResponsesCarryLengthAndConnectionClose() {
        let response = HTTPResponse.text(503, "not ready: draining")
        XCTAssertEqual(
            String(decoding: response.serialized(), as: UTF8.self),
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 20\r\n"
                + "Connection: close\r\n\r\nnot ready: draining\n")
        XCTAssertEqual(
            String(decoding: response.serialized(headOnly: true), as: UTF8.self).hasSuffix("Connection: close\r\n\r\n"),
            true)
    }
}

final class HTTPListenAddressTests: XCTestCase {
    func testAddressesParse() throws {
        XCTAssertEqual(
            try HTTPListenAddress(parsing: "127.0.0.1:9464"), HTTPListenAddress(host: "127.0.0.1", port: 9464))
        XCTAssertEqual(try HTTPListenAddress(parsing: ":0"), HTTPListenAddress(host: "0.0.0.0", port: 0))
        XCTAssertEqual(try HTTPListenAddress(parsing: "[::1]:80"), HTTPListenAddress(host: "::1", port: 80))
        XCTAssertEqual(HTTPListenAddress(host: "::1", port: 80).description, "[::1]:80")
    }

    func testBadAddressesAreRefusedNamingTheText() {
        for text in ["9464", "host:", "host:port", "host:65536", "host:-1", "::1:80", "[::1:80", "a b:1", "h:１"] {
            XCTAssertThrowsError(try HTTPListenAddress(parsing: text), text) { error in
                let error = error as! HTTPServerError
                XCTAssertEqual(error.code, .invalidAddress)
                XCTAssertTrue(error.message.contains("'\(text)'"), error.message)
            }
        }
    }
}

/// A real server on a loopback port, talked to through raw sockets.
final class HTTPServerTests: XCTestCase {
    var server: HTTPServer!

    override func setUpWithError() throws {
        server = try HTTPServer(listen: HTTPListenAddress(host: "127.0.0.1", port: 0), readTimeout: .milliseconds(300))
        server.start { request in
            request.path == "/hello" ? .text(200, "hello") : .text(404, "no such endpoint: \(request.path)")
        }
    }

    override func tearDown() {
        server.stop()
        let deadline = Date().addingTimeInterval(5)
        while !server.hasExited, Date() < deadline { usleep(10_000) }
        XCTAssertTrue(server.hasExited, "the serving thread did not end")
    }

    /// A socket connected to the server.
    func connectClient() throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = UInt16(server.boundAddress.port).bigEndian
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        XCTAssertEqual(connected, 0)
        return fd
    }

    /// Connects, sends `bytes` (then closes its sending side when asked), reads until the server closes.
    func exchange(_ bytes: [UInt8], halfClose: Bool = false) throws -> String {
        try exchangeAndEnd(bytes, halfClose: halfClose).response
    }

    /// `exchange`, also telling how the connection ended: nil when the server closed in order (FIN), else the
    /// errno of the failed read (ECONNRESET: the server reset it, a client such as curl then reports a failure).
    func exchangeAndEnd(_ bytes: [UInt8], halfClose: Bool = false) throws -> (response: String, failure: Int32?) {
        let fd = try connectClient()
        defer { close(fd) }
        _ = bytes.withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        if halfClose { shutdown(fd, Int32(SHUT_WR)) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let count = read(fd, &buffer, buffer.count)
            if count < 0 { return (String(decoding: received, as: UTF8.self), errno) }
            if count == 0 { break }
            received += buffer[..<count]
        }
        return (String(decoding: received, as: UTF8.self), nil)
    }

    func statusLine(_ response: String) -> String { response.components(separatedBy: "\r\n")[0] }

    func testGetReachesTheHandler() throws {
        let response = try exchange(Array("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        XCTAssertEqual(statusLine(response), "HTTP/1.1 200 OK")
        XCTAssertTrue(response.contains("Connection: close\r\n"))
        XCTAssertTrue(response.hasSuffix("\r\n\r\nhello\n"))
        XCTAssertEqual(
            statusLine(try exchange(Array("GET /nope HTTP/1.1\r\nHost: x\r\n\r\n".utf8))), "HTTP/1.1 404 Not Found")
    }

    func testHeadHasNoBody() throws {
        let response = try exchange(Array("HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
        XCTAssertEqual(statusLine(response), "HTTP/1.1 200 OK")
        XCTAssertTrue(response.hasSuffix("Connection: close\r\n\r\n"))
    }

    func testOtherMethodsAre405() throws {
        let response = try exchange(Array("POST /hello HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi".utf8))
        XCTAssertEqual(statusLine(response), "HTTP/1.1 405 Method Not Allowed")
        XCTAssertTrue(response.contains("Allow: GET, HEAD\r\n"))
    }

    /// POST, PUT and DELETE (any method but GET and HEAD), with no body, a body in the same packet as the head, a
    /// body sent after the head, or more body than the server discards: each is 405 with `Allow: GET, HEAD`, never a
    /// 400 for the body read as a next request, and the connection ends in order (the server reads no body).
    func testOtherMethodsWithOrWithoutABodyAre405AndEndInOrder() throws {
        let allowed = "HTTP/1.1 405 Method Not Allowed"
        for method in ["POST", "PUT", "DELETE"] {
            for path in ["/hello", "/metrics"] {
                let bare = try exchangeAndEnd(Array("\(method) \(path) HTTP/1.1\r\nHost: x\r\n\r\n".utf8))
                let body = String(repeating: "k=v&", count: 100)
                let withBody = try exchangeAndEnd(
                    Array(
                        "\(method) \(path) HTTP/1.1\r\nHost: x\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
                            .utf8))
                let http10 = try exchangeAndEnd(Array("\(method) \(path) HTTP/1.0\r\nContent-Length: 2\r\n\r\nhi".utf8))
                for (name, result) in [("no body", bare), ("a body", withBody), ("HTTP/1.0", http10)] {
                    XCTAssertEqual(statusLine(result.response), allowed, "\(method) \(path) with \(name)")
                    XCTAssertTrue(result.response.contains("\r\nAllow: GET, HEAD\r\n"), result.response)
                    XCTAssertTrue(
                        result.response.hasSuffix("\r\n\r\nmethod \(method) is not allowed; use GET\n"), result.response
                    )
                    XCTAssertNil(result.failure, "\(method) \(path) with \(name): the connection was reset")
                }
            }
        }
        // The body after the head, as a client that waits for `100 Continue` sends it: the answer comes first.
        let fd = try connectClient()
        defer { close(fd) }
        let head = "PUT /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n"
        _ = Array(head.utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var fds = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0)]
        XCTAssertEqual(poll(&fds, 1, 5000), 1, "no answer to a head whose body has not been sent")
        _ = Array("hello".utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        while true {
            let count = read(fd, &buffer, buffer.count)
            XCTAssertGreaterThanOrEqual(count, 0, "the read failed: errno \(errno)")
            if count <= 0 { break }
            received += buffer[..<count]
        }
        XCTAssertEqual(statusLine(String(decoding: received, as: UTF8.self)), allowed)
        // More body than the server discards after its answer (64 KiB): still answered, and the server goes on.
        let big = try exchangeAndEnd(
            Array("POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n".utf8)
                + [UInt8](repeating: 0x61, count: 100_000))
        XCTAssertEqual(statusLine(big.response), allowed)
        XCTAssertEqual(
            statusLine(try exchange(Array("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".utf8))), "HTTP/1.1 200 OK")
    }

    func testGarbageIs400AndTheServerGoesOn() throws {
        XCTAssertEqual(statusLine(try exchange([0x16, 0x03, 0x01, 0x00, 0xA5, 0x01])), "HTTP/1.1 400 Bad Request")
        XCTAssertEqual(statusLine(try exchange(Array("GET /hello\r\n\r\n".utf8))), "HTTP/1.1 400 Bad Request")
        XCTAssertEqual(
            statusLine(try exchange(Array(("GET /" + String(repeating: "a", count: 9000)).utf8))),
            "HTTP/1.1 431 Request Header Fields Too Large")
        XCTAssertEqual(
            statusLine(try exchange(Array("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".utf8))), "HTTP/1.1 200 OK")
    }

    func testASlowClientTimesOutAndOneThatHangsUpIsLeft() throws {
        let started = Date()
        XCTAssertEqual(statusLine(try exchange(Array("GET /hello HTTP/1.1\r\n".utf8))), "HTTP/1.1 408 Request Timeout")
        XCTAssertLessThan(Date().timeIntervalSince(started), 3)
        XCTAssertEqual(try exchange(Array("GET /hel".utf8), halfClose: true), "")
        XCTAssertEqual(
            statusLine(try exchange(Array("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".utf8))), "HTTP/1.1 200 OK")
    }

    func testASlowClientDoesNotDelayAProbe() throws {
        // A server of its own whose read timeout outlasts the test: a probe answered while the slow client still
        // waits can only have been served beside it.
        server.stop()
        server = try HTTPServer(listen: HTTPListenAddress(host: "127.0.0.1", port: 0), readTimeout: .seconds(30))
        server.start { _ in .text(200, "hello") }
        let slow = try connectClient()
        defer { close(slow) }
        _ = Array("GET /hello HTTP/1.1\r\n".utf8).withUnsafeBytes { send(slow, $0.baseAddress, $0.count, 0) }
        XCTAssertEqual(
            statusLine(try exchange(Array("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".utf8))), "HTTP/1.1 200 OK")
        var fds = [pollfd(fd: slow, events: Int16(POLLIN), revents: 0)]
        XCTAssertEqual(poll(&fds, 1, 0), 0, "the slow client was answered before the probe")
    }

    func testSlowClientsAtTheConnectionLimitNeverLockAProbeOut() throws {
        // Twice the limit of clients that never finish their heads, held far longer than the test runs: each
        // probe must still be answered, at once, by evicting the client that has waited longest.
        server.stop()
        server = try HTTPServer(
            listen: HTTPListenAddress(host: "127.0.0.1", port: 0), readTimeout: .seconds(30), maximumConnections: 4)
        server.start { _ in .text(200, "ok") }
        var slow: [Int32] = []
        defer { for fd in slow { close(fd) } }
        for round in 0..<3 {
            for _ in 0..<8 {
                let fd = try connectClient()
                slow.append(fd)
                _ = Array("GET / HTTP/1.1\r\n".utf8).withUnsafeBytes { send(fd, $0.baseAddress, $0.count, 0) }
            }
            let started = Date()
            XCTAssertEqual(
                statusLine(try exchange(Array("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".utf8))), "HTTP/1.1 200 OK",
                "probe \(round)")
            XCTAssertLessThan(Date().timeIntervalSince(started), 1, "probe \(round)")
        }
    }

    func testRefusedHeadsAreReadByTheClientNotReset() throws {
        // Far more input than the server reads: closing with it unread would reset the connection and lose the
        // response.
        let oversize = "GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + String(repeating: "a", count: 20_000) + "\r\n\r\n"
        let tooLarge = try exchangeAndEnd(Array(oversize.utf8))
        XCTAssertEqual(statusLine(tooLarge.response), "HTTP/1.1 431 Request Header Fields Too Large")
        XCTAssertTrue(
            tooLarge.response.hasSuffix("\r\n\r\nthe request head is longer than 8192 bytes\n"), tooLarge.response)
        XCTAssertNil(tooLarge.failure, "the connection was reset")
        var generator = SystemRandomNumberGenerator()
        // Any random bytes (starting with a letter, so past the first-byte check), with no end of head: refused at
        // once, not after the read timeout.
        let garbage =
            [UInt8(ascii: "G")]
            + (0..<5_000).map { _ in UInt8.random(in: 0...255, using: &generator) }.filter { $0 != 0x0A }
        let malformed = try exchangeAndEnd(garbage)
        XCTAssertEqual(statusLine(malformed.response), "HTTP/1.1 400 Bad Request")
        XCTAssertNil(malformed.failure, "the connection was reset")
        XCTAssertEqual(
            statusLine(try exchange(Array("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".utf8))), "HTTP/1.1 200 OK")
    }

    func testAThousandClientsConnectingAtOnceAreAllAnsweredPromptly() throws {
        // All connected (and their requests sent) before any answer is read: far more than the old listen backlog
        // (64), whose overflow left connections to be retried or reset.
        let started = Date()
        var clients: [Int32] = []
        defer { for fd in clients { close(fd) } }
        for _ in 0..<1000 {
            let fd = try connectClient()
            clients.append(fd)
            _ = Array("GET /hello HTTP/1.1\r\nHost: x\r\n\r\n".utf8).withUnsafeBytes {
                send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL))
            }
        }
        var statuses: [String: Int] = [:]
        var buffer = [UInt8](repeating: 0, count: 4096)
        for fd in clients {
            var timeout = timeval(tv_sec: 5, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
            var received: [UInt8] = []
            while true {
                let count = read(fd, &buffer, buffer.count)
                if count <= 0 { break }
                received += buffer[..<count]
            }
            statuses[statusLine(String(decoding: received, as: UTF8.self)), default: 0] += 1
        }
        XCTAssertEqual(statuses, ["HTTP/1.1 200 OK": 1000])
        XCTAssertLessThan(Date().timeIntervalSince(started), 5)
    }

    func testAPortInUseIsRefusedWithTheAddress() {
        XCTAssertThrowsError(try HTTPServer(listen: server.boundAddress)) { error in
            let error = error as! HTTPServerError
            XCTAssertEqual(error.code, .bindFailed)
            XCTAssertEqual(error.errno, EADDRINUSE)
            XCTAssertEqual(error.message, "cannot listen on \(server.boundAddress): bind: the port is already in use")
        }
        XCTAssertThrowsError(try HTTPServer(listen: HTTPListenAddress(host: "no-such-host.invalid", port: 1))) {
            error in
            XCTAssertEqual((error as! HTTPServerError).code, .unresolvable)
        }
    }
}
