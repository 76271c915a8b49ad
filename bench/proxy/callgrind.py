"""Reads a callgrind record (its name-compressed text format): the functions that ran, in order of
first appearance, with the instructions each executed itself. Shared by link_order.py and
instructions.py."""
import os
import re


def read(path):
    """{(object basename, function name): own instructions (Ir)}, in order of first appearance.
    Callgrind compresses names: "fn=(7) name" defines id 7, a later "fn=(7)" refers to it; "cfn="
    (a callee) shares the ids of "fn=", "cob=" those of "ob=". A cost line right after "calls=" is
    the inclusive cost of that call, so it is not the caller's own."""
    objects, names, costs = {}, {}, {}
    current, in_call = None, False
    current_object = None

    def resolve(spec, table):
        match = re.match(r"\((\d+)\)(?: (.*))?$", spec)
        if not match:
            return spec
        if match.group(2) is not None:
            table[match.group(1)] = match.group(2)
        return table.get(match.group(1))

    with open(path, errors="replace") as record:
        for line in record:
            line = line.rstrip("\n")
            if line.startswith("ob="):
                current_object = resolve(line[3:], objects)
            elif line.startswith("cob="):
                resolve(line[4:], objects)
            elif line.startswith("cfn="):
                resolve(line[4:], names)
            elif line.startswith("fn="):
                name = resolve(line[3:], names)
                # callgrind marks recursion levels as 'N
                current = (os.path.basename(current_object or "?"), re.sub(r"'\d+$", "", name or "?"))
                costs.setdefault(current, 0)
            elif line.startswith("calls="):
                in_call = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                if in_call:
                    in_call = False
                elif current is not None:
                    fields = line.split()
                    if len(fields) >= 2:
                        costs[current] += int(fields[1])
    return costs
