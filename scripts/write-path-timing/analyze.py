# Reads the T lines the instrumented nodes wrote to their logs (run.sh) and prints the p50 of each stage of the
# last 25 writes us-east took: the whole path, then the origin's commit and eu-west's apply in detail.
import re, sys, collections, statistics
ev=collections.defaultdict(dict)  # seq -> stage -> ns (first occurrence >= seq for ack stages)
rows=[]
for region in ["us-east","eu-west","ap-southeast"]:
    for line in open(f"{sys.argv[1]}/{region}.log", errors="replace"):
        m=re.match(r"T (\S+) (\d+) (\d+)", line)
        if m: rows.append((int(m.group(3)), region, m.group(1), int(m.group(2))))
rows.sort()
# own writes at us-east: O2-committed seq
o1=[r for r in rows if r[2]=="O1-received" and r[1]=="us-east"]
commits=[r for r in rows if r[2]=="O2-committed" and r[1]=="us-east"]
def first_after(t0, region, stage, seq, ge=True):
    for r in rows:
        if r[0]>=t0 and r[1]==region and r[2]==stage and (r[3]>=seq if ge else r[3]==seq): return r[0]
    return None
deltas=collections.defaultdict(list)
for c in commits[-25:]:
    t2,seq=c[0],c[3]
    t1=max(r[0] for r in o1 if r[0]<=t2)
    st={"O1":t1,"O2":t2}
    st["O3"]=first_after(t1,"us-east","O3-shipping",seq)
    st["O4"]=first_after(t1,"us-east","O4-shipped",seq)
    for peer in ["eu-west","ap-southeast"]:
        p=peer[:2]
        st[p+"R1"]=first_after(t1,peer,"R1-received",seq)
        st[p+"R2"]=first_after(t1,peer,"R2-applying",seq)
        st[p+"R3"]=first_after(t1,peer,"R3-applied",seq)
        st[p+"R4"]=first_after(t1,peer,"R4-synced",seq)
        st[p+"R5"]=first_after(t1,peer,"R5-ack-sent",seq)
        st[p+"O5"]=first_after(t1,"us-east","O5-ack-"+peer,seq)
    st["O6"]=first_after(t1,"us-east","O6-confirmed",seq)
    if None in st.values(): continue
    order=["O1","O2","O3","O4","euR1","euR2","euR3","euR4","euR5","euO5","O6"]
    for a,b in zip(order,order[1:]): deltas[a+"->"+b].append((st[b]-st[a])/1e6)
    deltas["total"].append((st["O6"]-st["O1"])/1e6)
for k,v in deltas.items(): print(f"{k:14s} p50 {statistics.median(v):8.3f} ms  n={len(v)}")
print("--- origin commit")
g=collections.defaultdict(list)
for c in commits[-25:]:
    t2,seq=c[0],c[3]
    t1=max(r[0] for r in o1 if r[0]<=t2)
    st={"O1":t1}
    for s in ["G1-submitted","G2-committing","G3-in-writer","G4-body-done","G4b-handed-out","G5-committed"]:
        st[s]=first_after(t1,"us-east",s,seq if s!="G1-submitted" else 0)
    st["O2"]=t2
    ks=list(st)
    if None in st.values(): continue
    for a,b in zip(ks,ks[1:]): g[a+"->"+b].append((st[b]-st[a])/1e6)
for k,v in g.items(): print(f"{k:30s} p50 {statistics.median(v):8.3f} ms")
print("--- replica apply eu-west")
g=collections.defaultdict(list)
for c in commits[-25:]:
    t2,seq=c[0],c[3]
    st={}
    st["R2"]=first_after(t2,"eu-west","R2-applying",seq)
    for s in ["A1-in-writer","A2-body-done","A2b-origin-durable","A3-committed"]:
        st[s]=first_after(t2,"eu-west",s,seq)
    st["R3"]=first_after(t2,"eu-west","R3-applied",seq)
    ks=list(st)
    if None in st.values(): continue
    for a,b in zip(ks,ks[1:]): g[a+"->"+b].append((st[b]-st[a])/1e6)
for k,v in g.items(): print(f"{k:30s} p50 {statistics.median(v):8.3f} ms")
