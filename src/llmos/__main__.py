from llmos.cli.main import main

main()
