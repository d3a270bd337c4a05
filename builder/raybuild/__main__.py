from raybuild.cli import main

main()
