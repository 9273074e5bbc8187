"""The core crate's layering: every `crate::` path in core/src points to a
lower layer (or its own module), but for the one pair bus <-> builder.
Prints each module's imports; exits non-zero on an upward import.
The layers are the ones lib.rs lists."""
import re, os, sys, glob

root = sys.argv[1] if len(sys.argv) > 1 else 'core/src'
files=[f for f in glob.glob(root+'/**/*.rs',recursive=True) if not f.endswith('loom_tests.rs')]
def mod_of(f):
    r=os.path.relpath(f,root)
    top=r.split('/')[0].replace('.rs','')
    return top
layer={}
order=[['lib'],['bus','builder'],['dispatch'],['shared'],['wait'],['reclaim','snapshot'],['subscription'],['mailbox'],
       ['config','context','handler','gate','history','flush','barrier','stats','trace'],['queue','panic','observe'],['error'],['event'],['loom']]
for i,g in enumerate(order):
    for m in g: layer[m]=i
bad=0
deps={}
for f in sorted(files):
    m=mod_of(f)
    s=open(f).read()
    # strip comments
    code='\n'.join(l.split('//')[0] for l in s.split('\n'))
    used=set(re.findall(r'crate::(\w+)',code))
    # `use crate::{a, b}` forms
    for grp in re.findall(r'use crate::\{([^}]*)\}',code):
        used|=set(re.findall(r'(\w+)::|(\w+)',grp)[0]) if False else set(x.split('::')[0].strip() for x in grp.split(','))
    used.discard(m); used-= {'Bus','Event','Handler','SubscribeOptions','Overflow','Priority','MAX_NAME_LEN','SubscribeError','PublishError','Stats','BusBuilder','HandlerResult','SubscriptionId','Target','BacklogFull','HandlerPanic','HandlerTimeout','PayloadError','WaitTimeout','NameError','HistoryError','BuildError','FlushTimeout','ShutdownTimeout','SubscriptionStats','Replayed','HistoryQuery','Unsubscribed','SubscriptionInfo','ErrorHook','WeakBus','SubscriptionGuard','Observer','CallObserver','Subscribed','EventId','Payload','TypedPayload','matcher',''}
    deps.setdefault(m,set()).update(used)
for m in sorted(deps):
    ups=[u for u in deps[m] if u in layer and m in layer and layer[u]<=layer[m] and not (m=='bus' and u=='builder') and not (m=='builder' and u=='bus') and m!='lib']
    flag=' UP: '+','.join(sorted(ups)) if ups else ''
    if ups: bad+=1
    print(f"{m:13} -> {', '.join(sorted(u for u in deps[m] if u in layer))}{flag}")
print('upward imports:', bad)
sys.exit(1 if bad else 0)
