import XCTest

@testable import RedisClient

final class ReplyAndCommandTests: XCTestCase {
    func testStringAccessor() {
        XCTAssertEqual(RedisReply.status("OK").string, "OK")
        XCTAssertEqual(RedisReply.bulk(Array("héllo".utf8)).string, "héllo")
        XCTAssertNil(RedisReply.bulk([0xff, 0xfe]).string)
        XCTAssertNil(RedisReply.integer(1).string)
        XCTAssertNil(RedisReply.error("ERR x").string)
        XCTAssertNil(RedisReply.null.string)
        XCTAssertNil(RedisReply.array([.status("OK")]).string)
    }

    func testIntAccessor() {
        XCTAssertEqual(RedisReply.integer(-12).int, -12)
        XCTAssertEqual(RedisReply.bulk(Array("42".utf8)).int, 42)
        XCTAssertEqual(RedisReply.status("-7").int, -7)
        XCTAssertNil(RedisReply.bulk(Array("4x".utf8)).int)
        XCTAssertNil(RedisReply.bulk(Array(" 4".utf8)).int)
        XCTAssertNil(RedisReply.null.int)
        XCTAssertNil(RedisReply.error("ERR 1").int)
    }

    func testBytesArrayAndNull() {
        XCTAssertEqual(RedisReply.bulk([0, 255]).bytes, [0, 255])
        XCTAssertEqual(RedisReply.status("OK").bytes, [79, 75])
        XCTAssertNil(RedisReply.integer(3).bytes)
        XCTAssertEqual(RedisReply.array([.null, .integer(1)]).array, [.null, .integer(1)])
        XCTAssertEqual(RedisReply.array([]).array, [])
        XCTAssertNil(RedisReply.bulk([]).array)
        XCTAssertTrue(RedisReply.null.isNull)
        XCTAssertFalse(RedisReply.bulk([]).isNull)
        XCTAssertFalse(RedisReply.array([]).isNull)
    }

    func testCommandInitialisers() {
        let listed = RedisCommand(["set", "k", "v"])
        XCTAssertEqual(listed.arguments, [Array("set".utf8), Array("k".utf8), Array("v".utf8)])
        XCTAssertEqual(RedisCommand("set", "k", "v"), listed)
        XCTAssertEqual(RedisCommand(bytes: [Array("set".utf8), Array("k".utf8), Array("v".utf8)]), listed)
        var built = RedisCommand("set")
        built.append("k")
        built.append(bytes: Array("v".utf8))
        XCTAssertEqual(built, listed)
        XCTAssertEqual(listed.name, "SET")
        XCTAssertEqual(RedisCommand(bytes: []).name, "")
        XCTAssertEqual(RedisCommand("xReadGroup").name, "XREADGROUP")
    }

    func testBlockTimeOfBlockingCommands() {
        let readGroup = RedisCommand(
            "XREADGROUP", "GROUP", "g", "c", "COUNT", "1", "block", "5000", "STREAMS", "s", ">"
        )
        XCTAssertEqual(readGroup.serverBlockTime, .some(.milliseconds(5000)))
        XCTAssertEqual(RedisCommand("XREAD", "BLOCK", "0", "STREAMS", "s", "$").serverBlockTime, .some(nil))
        // A stream named "BLOCK" after STREAMS is no option.
        XCTAssertEqual(RedisCommand("XREAD", "STREAMS", "BLOCK", "5").serverBlockTime, nil)
        XCTAssertEqual(RedisCommand("BLPOP", "a", "b", "2.5").serverBlockTime, .some(.milliseconds(2500)))
        XCTAssertEqual(RedisCommand("BLMPOP", "1", "1", "a", "LEFT").serverBlockTime, .some(.seconds(1)))
        XCTAssertEqual(RedisCommand("BRPOP", "a", "0").serverBlockTime, .some(nil))
        XCTAssertEqual(RedisCommand("GET", "k").serverBlockTime, nil)
        XCTAssertEqual(RedisCommand("bzPopMin", "z", "1").serverBlockTime, .some(.seconds(1)))
        XCTAssertEqual(
            RedisCommand("xread", "block", "7", "STREAMS", "s", "$").serverBlockTime, .some(.milliseconds(7)))
        XCTAssertEqual(RedisCommand(bytes: []).serverBlockTime, nil)
    }

    func testEncodedAsRESPBulkStrings() {
        let command = RedisCommand(bytes: [Array("SET".utf8), [], [0, 13, 10, 0xFF], Array("é".utf8)])
        let expected = "*4\r\n$3\r\nSET\r\n$0\r\n\r\n$4\r\n".utf8 + [0, 13, 10, 0xFF] + "\r\n$2\r\né\r\n".utf8
        XCTAssertEqual(command.encoded, Array(expected))
        XCTAssertEqual(RedisCommand(bytes: []).encoded, Array("*0\r\n".utf8))
        let long = [UInt8](repeating: 0x61, count: 12345)
        XCTAssertEqual(RedisCommand(bytes: [long]).encoded, Array("*1\r\n$12345\r\n".utf8) + long + [13, 10])
    }

    func testErrorTypes() {
        let notSent: [RedisClientError.Code] = [.invalidEndpoint, .connectionFailed, .authenticationFailed, .closed]
        let maybeSent: [RedisClientError.Code] = [.timeout, .connectionLost, .protocolError]
        for code in notSent {
            XCTAssertTrue(RedisClientError(code: code, message: "m").commandWasNotSent, "\(code)")
        }
        for code in maybeSent {
            XCTAssertFalse(RedisClientError(code: code, message: "m").commandWasNotSent, "\(code)")
        }
        XCTAssertEqual(RedisClientError(code: .timeout, message: "too slow").description, "too slow")

        let server = RedisServerError("NOGROUP No such key 'jobs' or consumer group 'g'")
        XCTAssertEqual(server.kind, "NOGROUP")
        XCTAssertEqual(
            server.description, "Redis replied with an error: NOGROUP No such key 'jobs' or consumer group 'g'"
        )
        XCTAssertEqual(RedisServerError("ERR").kind, "ERR")
    }
}
