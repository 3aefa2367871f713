#!/usr/bin/env python3
"""Lists pairs of engine modules that import each other (two-way pairs are import cycles),
at the top level and one level down. Reads engine/src; comments and tests are skipped.

usage: python3 benches/tools/import_cycles.py [ENGINE_SRC]
"""
import os
import re
import sys

root = sys.argv[1] if len(sys.argv) > 1 else "engine/src"
mods={}
for dp,dn,fn in os.walk(root):
    for f in fn:
        if not f.endswith('.rs'): continue
        p=os.path.join(dp,f)
        rel=os.path.relpath(p,root)[:-3]
        parts=rel.split('/')
        if parts[-1]=='mod': parts=parts[:-1]
        if parts==['lib'] or parts==['main']: continue
        mods['::'.join(parts)]=open(p).read()
def top(m, depth): return '::'.join(m.split('::')[:depth])
names=set(mods)
edges=set()
for m,src in mods.items():
    # strip tests
    src=src.split('#[cfg(test)]')[0]
    src='\n'.join(l for l in src.split('\n') if not l.strip().startswith('//'))
    for ref in re.findall(r'crate::([a-z_]+(?:::[a-z_]+)*)', src):
        parts=ref.split('::')
        # longest prefix that is a module
        for k in range(len(parts),0,-1):
            cand='::'.join(parts[:k])
            if cand in names: edges.add((m,cand)); break
    for grp in re.findall(r'use crate::\{([^;]*)\};', src, re.S):
        for item in re.findall(r'([a-z_]+)(?:::([a-z_]+))?', grp):
            for cand in ['::'.join([x for x in item if x]), item[0]]:
                if cand in names: edges.add((m,cand)); break
    for sup in re.findall(r'super::([a-z_]+)', src):
        parent='::'.join(m.split('::')[:-1])
        cand=(parent+'::'+sup) if parent else sup
        if cand in names: edges.add((m,cand))
    for grp in re.findall(r'use super::\{([^;]*)\};', src, re.S):
        parent='::'.join(m.split('::')[:-1])
        for item in re.findall(r'\b([a-z_]+)\b', grp):
            cand=(parent+'::'+item) if parent else item
            if cand in names: edges.add((m,cand))
for depth in (1,2):
    g={}
    for a,b in edges:
        ta,tb=top(a,depth),top(b,depth)
        if ta!=tb and not tb.startswith(ta+'::') and not ta.startswith(tb+'::'):
            g.setdefault(ta,set()).add(tb)
    cyc=[(a,b) for a in g for b in g[a] if a in g.get(b,()) and a<b]
    print('depth',depth,'two-way pairs:',cyc)
