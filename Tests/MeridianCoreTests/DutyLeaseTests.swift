import MeridianCore
import Testing

@Suite struct DutyLeaseTests {
    static let settings = try! DutyLease.Settings(ttlMs: 5_000, renewEveryMs: 1_000, marginMs: 1_000)

    static func request(_ effects: [DutyLease.Effect]) -> UInt64? {
        effects.lazy.compactMap { effect -> UInt64? in
            switch effect {
            case .acquire(let request), .renew(_, let request): request
            default: nil
            }
        }.first
    }

    @Test func aGrantStartsTheDutiesWhichRunUntilTheLeaseCountedFromTheRequestRunsOut() throws {
        var lease = DutyLease(settings: Self.settings, nowMs: 0)
        let first = lease.handle(.ticked, nowMs: 0)
        #expect(first == [.acquire(request: 1)])
        #expect(lease.handle(.ticked, nowMs: 500).isEmpty, "one request at a time")
        // Granted 300 ms after it was sent: the lease counts from the send, not the answer.
        #expect(lease.handle(.granted(request: 1, epoch: 7), nowMs: 300) == [.startDuties(epoch: 7)])
        #expect(lease.role == .holder(epoch: 7, validUntilMs: 4_000))
        // Renewals go out every interval; each one answered moves the end.
        #expect(lease.handle(.ticked, nowMs: 1_000) == [.renew(epoch: 7, request: 2)])
        #expect(lease.handle(.renewed(request: 2), nowMs: 1_200).isEmpty)
        #expect(lease.role == .holder(epoch: 7, validUntilMs: 5_000))
        // The database stops answering: the duties stop before the row can expire there, and the node asks again.
        #expect(lease.handle(.ticked, nowMs: 2_000) == [.renew(epoch: 7, request: 3)])
        #expect(lease.handle(.failed(request: 3, reason: "connection refused"), nowMs: 2_100).isEmpty)
        #expect(lease.handle(.ticked, nowMs: 3_100) == [.renew(epoch: 7, request: 4)])
        let late = lease.handle(.ticked, nowMs: 5_000)
        #expect(late.first == .stopDuties(epoch: 7, reason: "the lease was not renewed in time"))
        #expect(lease.epoch == nil)
        // A renewal answered after its timeout is ignored; the next request asks for the lease anew.
        #expect(late.contains(.acquire(request: 5)))
        #expect(lease.handle(.renewed(request: 4), nowMs: 5_050).isEmpty && lease.epoch == nil)
    }

    @Test func aStandbyWaitsWhileAnotherNodeHoldsTheLeaseAndAHolderStepsDownWhenItMoves() {
        var lease = DutyLease(settings: Self.settings, nowMs: 0)
        #expect(lease.handle(.ticked, nowMs: 0) == [.acquire(request: 1)])
        #expect(lease.handle(.refused(request: 1, holder: "node-b"), nowMs: 10).isEmpty)
        #expect(lease.handle(.ticked, nowMs: 500).isEmpty, "a standby asks once per interval")
        #expect(lease.handle(.ticked, nowMs: 1_010) == [.acquire(request: 2)])
        #expect(lease.handle(.granted(request: 2, epoch: 3), nowMs: 1_020) == [.startDuties(epoch: 3)])
        // A renewal refused: another node was granted the lease.
        #expect(lease.handle(.ticked, nowMs: 2_010) == [.renew(epoch: 3, request: 3)])
        #expect(lease.handle(.refused(request: 3, holder: "node-c"), nowMs: 2_020) == [.stopDuties(epoch: 3, reason: "the lease moved to node-c")])
        #expect(lease.role == .standby)
    }

    @Test func aFencedStatementStopsTheDutiesAtOnceAndStaleAnswersChangeNothing() {
        var lease = DutyLease(settings: Self.settings, nowMs: 0)
        _ = lease.handle(.ticked, nowMs: 0)
        _ = lease.handle(.granted(request: 1, epoch: 4), nowMs: 5)
        #expect(lease.handle(.fenced(epoch: 3), nowMs: 10).isEmpty, "a statement of an older epoch says nothing of this one")
        #expect(lease.handle(.fenced(epoch: 4), nowMs: 20) == [.stopDuties(epoch: 4, reason: "a statement found the lease at another epoch")])
        #expect(lease.handle(.granted(request: 1, epoch: 4), nowMs: 30).isEmpty, "an answer already taken")
        #expect(lease.epoch == nil)
        // Granted again later, with a new epoch: the duties restart under it.
        #expect(lease.handle(.ticked, nowMs: 1_020) == [.acquire(request: 2)])
        #expect(lease.handle(.granted(request: 2, epoch: 5), nowMs: 1_030) == [.startDuties(epoch: 5)])
    }

    @Test func aHolderThatCannotCarryTheDutiesGivesTheLeaseBackAndWaitsALeaseBeforeAskingAgain() {
        var lease = DutyLease(settings: Self.settings, nowMs: 0)
        _ = lease.handle(.ticked, nowMs: 0)
        _ = lease.handle(.granted(request: 1, epoch: 4), nowMs: 5)
        #expect(lease.handle(.resigned(epoch: 3, reason: "old"), nowMs: 10).isEmpty, "another epoch's failure says nothing of this one")
        // A renewal goes out, and the node gives the lease up before it is answered.
        #expect(lease.handle(.ticked, nowMs: 1_000) == [.renew(epoch: 4, request: 2)])
        #expect(lease.handle(.resigned(epoch: 4, reason: "cannot bind"), nowMs: 1_020) == [.stopDuties(epoch: 4, reason: "cannot bind"), .release(epoch: 4)])
        #expect(lease.role == .standby)
        #expect(lease.handle(.failed(request: 2, reason: "late"), nowMs: 1_100).isEmpty, "the renewal's answer goes to nobody")
        #expect(lease.handle(.renewed(request: 2), nowMs: 1_100).isEmpty && lease.epoch == nil)
        #expect(lease.handle(.ticked, nowMs: 5_000).isEmpty, "no request within a lease's time of giving it up")
        #expect(lease.handle(.ticked, nowMs: 6_020) == [.acquire(request: 3)])
    }

    @Test func aShutdownStopsTheDutiesThenGivesTheLeaseBack() {
        var lease = DutyLease(settings: Self.settings, nowMs: 0)
        _ = lease.handle(.ticked, nowMs: 0)
        _ = lease.handle(.granted(request: 1, epoch: 2), nowMs: 5)
        #expect(lease.handle(.shuttingDown, nowMs: 10) == [.stopDuties(epoch: 2, reason: "the node is shutting down"), .release(epoch: 2)])
        #expect(lease.handle(.ticked, nowMs: 5_000).isEmpty, "a stopped node asks for nothing")
        // A grant that was under way when it stopped is given back.
        var asking = DutyLease(settings: Self.settings, nowMs: 0)
        _ = asking.handle(.ticked, nowMs: 0)
        _ = asking.handle(.shuttingDown, nowMs: 1)
        #expect(asking.handle(.granted(request: 1, epoch: 9), nowMs: 2) == [.release(epoch: 9)])
    }

    @Test func settingsLeaveTimeForTwoRenewals() {
        #expect(throws: MeridianError.self) { try DutyLease.Settings(ttlMs: 5_000, renewEveryMs: 2_500, marginMs: 1_000) }
        #expect(throws: MeridianError.self) { try DutyLease.Settings(ttlMs: 1_000, renewEveryMs: 100, marginMs: 1_000) }
        #expect((try? DutyLease.Settings(ttlMs: 5_000, renewEveryMs: 2_000, marginMs: 1_000)) != nil)
    }
}
