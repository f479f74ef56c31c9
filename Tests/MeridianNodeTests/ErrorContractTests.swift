// Proves the error half of the HTTP contract (`MeridianAPI`): every kind of failure has the status DESIGN.md
// lists (the mapping is an exhaustive switch over kinds, so a new code cannot fall through to 500), only 503s
// carry Retry-After, and the JSON error says whether a refused change took effect: as its code implies, or as
// the refusal states, and only for a request that changes something.
import Foundation
import HTTPTypes
import MeridianAPI
import MeridianCore
import Testing

@Suite struct ErrorContractTests {
    @Test func everyKindHasTheStatusTheContractLists() {
        let expected: [MeridianError.Code.Kind: Int] = [
            .badInput: 400, .notFound: 404, .methodNotAllowed: 405, .notAllowedByPolicy: 409, .preconditionFailed: 412,
            .tooLarge: 413, .unavailable: 503, .timedOut: 504, .storageFull: 507, .internalFailure: 500, .unprocessable: 422, .unauthenticated: 401, .forbidden: 403, .gone: 410,
        ]
        #expect(Set(expected.keys) == Set(MeridianError.Code.Kind.allCases))
        for kind in MeridianError.Code.Kind.allCases { #expect(kind.httpStatus.code == expected[kind], "\(kind)") }
        #expect(MeridianError.Code.ackTimeout.httpStatus == .gatewayTimeout)
        #expect(MeridianError.Code.clockUnverified.retryAfterSeconds == 1 && MeridianError.Code.leaderUnavailable.retryAfterSeconds == 5)
        #expect(MeridianError.Code.preconditionFailed.retryAfterSeconds == nil && MeridianError.Code.storageFull.retryAfterSeconds == nil)
    }

    @Test func aRefusedChangeSaysWhetherItTookEffect() {
        // Raised before anything is written: no. A forwarded write whose answer was lost, or a write durable at its
        // origin but unconfirmed: maybe.
        #expect(MeridianError.Code.leaderUnavailable.appliedUnlessStated == .no)
        #expect(MeridianError.Code.overloaded.appliedUnlessStated == .no)
        #expect(MeridianError.Code.ackTimeout.appliedUnlessStated == .maybe)
        #expect(MeridianError.Code.regionUnavailable.appliedUnlessStated == .maybe)
        // A refusal that knows better says so: the lease lost after the commit.
        let lost = MeridianError(.leaderUnavailable, "The write is durable here, but the lease was lost before it was acknowledged.", applied: .maybe)
        #expect(lost.errorFields(change: true)["applied"] == "maybe")
        #expect(lost.stating(applied: .no).appliedOrImplied == .no)
        // A read's refusal carries no such field; the context and the message travel as they are.
        let notFound = MeridianError(.keyNotFound, "Key 'k' is not in keyspace 'profiles'.", context: ["key": "k"])
        #expect(notFound.errorFields(change: false) == ["code": "key_not_found", "message": "Key 'k' is not in keyspace 'profiles'.", "key": "k"])
    }
}
