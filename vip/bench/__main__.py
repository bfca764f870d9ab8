from vip.bench.cli import main

main()
