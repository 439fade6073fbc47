from station.cli.app import main

main()
