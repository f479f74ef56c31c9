/// One operation on a key-value register, as the client that issued it saw it.
public struct RegisterOperation: Sendable, Hashable {
    public enum Kind: Sendable, Hashable {
        /// Set the key (nil: delete it).
        case write(String?)
        /// Read the key and saw this value (nil: absent).
        case read(String?)
    }

    public let key: String
    public let kind: Kind
    /// When the request was sent, on one clock shared by every client of the history.
    public let call: UInt64
    /// When the answer arrived; nil when the outcome is unknown (a timeout: a write may or may not have
    /// taken effect, so it may be placed anywhere after its call, or last). Reads without an answer tell
    /// nothing and are dropped.
    public let returned: UInt64?

    public init(key: String, kind: Kind, call: UInt64, returned: UInt64?) {
        self.key = key
        self.kind = kind
        self.call = call
        self.returned = returned
    }
}

/// Decides whether a history of register operations is linearizable (Herlihy & Wing): whether each
/// operation can be placed at one instant between its call and its return so that every read sees the
/// latest write before it.
///
/// The search is Wing & Gong's: walk the history in time order, try to linearize each call whose return
/// has not passed, backtrack when a return is reached with its call unplaced. Lowe's memoization prunes
/// it: a (set of placed operations, register state) pair that was tried once is never tried again. The
/// history is first split per key (P-compositionality, Horn & Kroening), since a register history is
/// linearizable exactly when each key's is; this is also what Porcupine does.
public struct LinearizabilityChecker: Sendable {
    public enum Verdict: Sendable, Hashable {
        case linearizable
        /// No order exists for this key; `operations` are that key's, in call order.
        case violation(key: String, operations: [RegisterOperation])
        /// The search for this key exceeded `stepsMax` without deciding.
        case unknown(key: String)
    }

    /// The most search steps per key before giving up with `unknown`.
    public var stepsMax: Int

    public init(stepsMax: Int = 5_000_000) {
        self.stepsMax = stepsMax
    }

    /// Checks a whole history; the first key that is not linearizable (or undecided) is reported.
    /// - Parameter initial: Every key's value before the history (nil: absent).
    public func check(_ history: [RegisterOperation], initial: String? = nil) -> Verdict {
        var byKey: [String: [RegisterOperation]] = [:]
        for operation in history {
            if case .read = operation.kind, operation.returned == nil { continue }
            byKey[operation.key, default: []].append(operation)
        }
        for key in byKey.keys.sorted() {
            let operations = Self.boundingUnknownWrites(byKey[key]!, initial: initial).sorted { $0.call < $1.call }
            switch checkKey(operations, initial: initial) {
            case true?: continue
            case false?: return .violation(key: key, operations: operations)
            case nil: return .unknown(key: key)
            }
        }
        return .linearizable
    }

    /// Narrows the writes whose outcome is unknown (timeouts), which otherwise stay open to the end of the
    /// history and make the search exponential in their number. Both steps keep the verdict exact:
    /// - a write whose value no read returned is dropped: wherever a linearization places it, the next
    ///   operation on the key is a write (a read would have returned its value), so the same order without
    ///   it is a linearization too; and one without it extends by placing it last;
    /// - a write of a value no other write and not the initial state holds, which some read returned, must
    ///   take effect before that read does, so before the earliest such read returned: that becomes its return.
    static func boundingUnknownWrites(_ operations: [RegisterOperation], initial: String?) -> [RegisterOperation] {
        var earliestRead: [String?: UInt64] = [:]
        var writers: [String?: Int] = [:]
        for operation in operations {
            switch operation.kind {
            case .read(let seen):
                if let returned = operation.returned { earliestRead[seen] = min(earliestRead[seen] ?? .max, returned) }
            case .write(let value):
                writers[value, default: 0] += 1
            }
        }
        return operations.compactMap { operation in
            guard operation.returned == nil, case .write(let value) = operation.kind else { return operation }
            guard let readBy = earliestRead[value] else { return nil }
            guard value != nil, value != initial, writers[value] == 1 else { return operation }
            return RegisterOperation(key: operation.key, kind: operation.kind, call: operation.call, returned: max(operation.call, readBy))
        }
    }

    /// One key: true (linearizable), false (not), nil (undecided within the step budget).
    private func checkKey(_ operations: [RegisterOperation], initial: String?) -> Bool? {
        let count = operations.count
        guard count > 0 else { return true }
        // Events: index 2i is operation i's call, 2i+1 its return. Calls sort before returns at the same
        // instant, so operations touching at an instant count as concurrent.
        var events: [(time: UInt64, isReturn: Bool, operation: Int)] = []
        events.reserveCapacity(2 * count)
        for (index, operation) in operations.enumerated() {
            events.append((operation.call, false, index))
            events.append((operation.returned ?? .max, true, index))
        }
        events.sort { ($0.time, $0.isReturn ? 1 : 0, $0.operation) < ($1.time, $1.isReturn ? 1 : 0, $1.operation) }
        // A doubly linked list over the events; node 0 is the head sentinel, node k+1 is events[k].
        let nodes = events.count + 1
        var next = Array(1...nodes).map { $0 == nodes ? -1 : $0 }
        var previous = Array(-1..<(nodes - 1))
        var callNode = Array(repeating: 0, count: count)
        var returnNode = Array(repeating: 0, count: count)
        for (position, event) in events.enumerated() {
            if event.isReturn { returnNode[event.operation] = position + 1 } else { callNode[event.operation] = position + 1 }
        }
        func event(_ node: Int) -> (time: UInt64, isReturn: Bool, operation: Int) { events[node - 1] }
        func lift(_ operation: Int) {
            let call = callNode[operation], ret = returnNode[operation]
            next[previous[call]] = next[call]
            if next[call] >= 0 { previous[next[call]] = previous[call] }
            next[previous[ret]] = next[ret]
            if next[ret] >= 0 { previous[next[ret]] = previous[ret] }
        }
        func unlift(_ operation: Int) {
            let call = callNode[operation], ret = returnNode[operation]
            next[previous[ret]] = ret
            if next[ret] >= 0 { previous[next[ret]] = ret }
            next[previous[call]] = call
            if next[call] >= 0 { previous[next[call]] = call }
        }
        struct Placed: Hashable {
            var bits: [UInt64]
            var state: String?
        }
        var linearized = Array(repeating: UInt64(0), count: (count + 63) / 64)
        var state = initial
        var tried: Set<Placed> = []
        var stack: [(operation: Int, state: String?)] = []
        var node = next[0]
        var steps = 0
        while next[0] >= 0 {
            steps += 1
            if steps > stepsMax { return nil }
            guard node >= 0 else { return false }
            let current = event(node)
            if !current.isReturn {
                let operation = operations[current.operation]
                var newState = state
                let legal: Bool
                switch operation.kind {
                case .write(let value):
                    newState = value
                    legal = true
                case .read(let seen):
                    legal = seen == state
                }
                if legal {
                    var bits = linearized
                    bits[current.operation / 64] |= 1 << UInt64(current.operation % 64)
                    if tried.insert(Placed(bits: bits, state: newState)).inserted {
                        stack.append((current.operation, state))
                        state = newState
                        linearized = bits
                        lift(current.operation)
                        node = next[0]
                        continue
                    }
                }
                node = next[node]
            } else {
                // A return whose call is still unplaced: undo the latest placement and try the next candidate.
                guard let (operation, previousState) = stack.popLast() else { return false }
                state = previousState
                linearized[operation / 64] &= ~(1 << UInt64(operation % 64))
                unlift(operation)
                node = next[callNode[operation]]
            }
        }
        return true
    }
}
