from timoe_cli.main import main

main()
