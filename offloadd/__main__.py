from offloadd.cli import main

main()
