# Sourced by a bench script whose client is Python with the `websockets` package: sets
# $python to an interpreter that has it. Without it on the system, a venv in
# target/peers/venv gets it from the registry (as compare.sh's Python peer does).
python=python3
if ! python3 -c 'import websockets' 2> /dev/null; then
  [ -x target/peers/venv/bin/python ] || python3 -m venv target/peers/venv
  target/peers/venv/bin/pip install --quiet -r benches/peers/python-websockets/requirements.txt
  python=target/peers/venv/bin/python
fi
