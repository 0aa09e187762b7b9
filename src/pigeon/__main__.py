from pigeon.cli import main

main()
