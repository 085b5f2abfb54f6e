from nfcompile.cli import main

main()
